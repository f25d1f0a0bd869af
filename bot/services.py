"""The services the bot runs on, built once per process from its settings.

`build_services` is the one place that wires the ledger, outbox, queues, limiters, keywords,
replies, campaigns and the Cloud API client together. The web app registers the result
(`create_app`) and reaches it with `current_services()`; the worker uses it without a Flask app.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta

import redis
from flask import Flask, current_app
from sqlalchemy.engine import Engine

from bot.domain.keywords import KeywordBook, KeywordFileError, load_keywords
from bot.domain.policy import ImplicitCoverage
from bot.domain.replies import Replies, ReplyTextError
from bot.inbound.batcher import Combiner
from bot.inbound.handlers import Context
from bot.inbound.handlers.dispatch import record_posts
from bot.outbound.cloud_api import CloudApi
from bot.outbound.forwarder import wake_forwarders
from bot.outbound.limiter import RateLimiter
from bot.outbound.opt_out_marks import OptOutMarks
from bot.outbound.queues import enqueuer, make_queues
from bot.outbound.sender import PACING_MARGIN, PAIR_BURST, PAIR_RATE, SLOT_HORIZON
from bot.settings import INSTANCE, PROJECT_ROOT, ConfigError, Settings, instance_secret
from bot.storage.campaigns import Campaigns
from bot.storage.db import make_engine
from bot.storage.forwarding import Destination, Feed, ForwardQueue
from bot.storage.integrity import LedgerKey
from bot.storage.ledger import Ledger
from bot.storage.outbox import Outbox
from bot.storage.review_queue import ReviewQueue
from bot.storage.staff import StaffAccounts
from bot.storage.templates import SyncFailed, TemplateCatalog
from bot.storage.web_opt_ins import WebOptIns

# What building the services (or checking the schema: SchemaNotCurrent is a ConfigError) raises
# for a configuration that cannot work; its message is the one-line reason start-up gives.
STARTUP_ERRORS = (ConfigError, KeywordFileError, ReplyTextError)
PAGE_SUBMISSIONS = (5, 600)  # hosted-page submissions per IP and per number: 5 per 10 minutes
SYNC_FAILURE = "templates:last-sync-failure"  # Redis: the last failed template sync, until one succeeds
SIGN_INS_PER_ACCOUNT = (5, 900)  # console sign-in attempts per email address: 5 per 15 minutes
SIGN_INS_PER_NETWORK = (20, 900)  # ... and per client network: an office behind one address has several staff
_EXTENSION = "consent_bot"  # the one key under which create_app registers the services

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    redis: redis.Redis
    keywords: KeywordBook
    replies: Replies
    ledger: Ledger
    opt_out_marks: OptOutMarks
    outbox: Outbox
    campaigns: Campaigns
    templates: TemplateCatalog  # Meta's template catalog (SPEC §7)
    cloud_api: CloudApi
    throughput_limiter: RateLimiter  # the phone number's messages per second, shared by every worker
    pair_limiter: RateLimiter  # Meta's pair rate: about one message per 6 s to one user
    page_limiter: RateLimiter  # hosted-page submissions per client and per number
    web_opt_ins: WebOptIns  # opt-in page requests waiting for their confirmation from WhatsApp
    staff: StaffAccounts  # who may use the console and the staff API (SPEC §8)
    review_queue: ReviewQueue  # possible opt-outs for staff to confirm or dismiss
    account_sign_ins: RateLimiter  # console sign-in attempts per email address
    network_sign_ins: RateLimiter  # ... and per client network
    handlers: Context  # what the webhook's handlers work with
    forward_queue: ForwardQueue  # events for the business's systems, to deliver (SPEC §9)
    webhook_intake: Combiner = field(init=False)  # POSTs that wait together are recorded together

    def __post_init__(self) -> None:
        self.webhook_intake = Combiner(lambda posts: record_posts(self.handlers, posts))

    def dispose(self) -> None:
        """Close pooled connections (tests and short-lived tools build many)."""
        self.engine.dispose()
        self.redis.close()


def build_services(settings: Settings) -> Services:
    """Wire the bot's services. A broken keyword file or reply text raises here (STARTUP_ERRORS);
    nothing connects to the database or Redis until first used."""
    INSTANCE.mkdir(exist_ok=True)  # the default SQLite ledger lives there
    keywords = load_keywords(settings.keywords_file)
    replies = Replies(PROJECT_ROOT / "templates" / "replies", settings.business_name, keywords)
    replies.check()
    engine = make_engine(settings.database_url)
    connection = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)
    opt_out_marks = OptOutMarks(connection)
    web_opt_ins = WebOptIns(connection)
    ledger = Ledger(engine, key=ledger_key(settings), opted_out=opt_out_marks.mark)
    coverage = ImplicitCoverage(
        utility=settings.implicit_consent_covers_utility, authentication=settings.implicit_consent_covers_authentication
    )
    templates = TemplateCatalog(engine)
    destinations = [d for d, wanted in ((Destination.URL, settings.forward_url), (Destination.HANDLERS, settings.bot_handlers)) if wanted]
    feed = Feed(destinations, wake=wake_forwarders(connection))
    ledger.feed = feed
    outbox = Outbox(
        engine, ledger, enqueuer(make_queues(connection)), coverage, lease=timedelta(seconds=settings.send_lease_seconds),
        catalog=templates if settings.whatsapp_business_account_id else None, feed=feed,
    )
    campaigns = Campaigns(
        engine, ledger, outbox, max_opt_out_rate=settings.campaign_max_opt_out_rate,
        on_pause=opt_out_marks.mark_paused, on_resume=opt_out_marks.resumed,
    )
    return Services(
        settings=settings,
        engine=engine,
        redis=connection,
        keywords=keywords,
        replies=replies,
        ledger=ledger,
        opt_out_marks=opt_out_marks,
        outbox=outbox,
        campaigns=campaigns,
        templates=templates,
        cloud_api=CloudApi(
            settings.whatsapp_token, settings.whatsapp_phone_number_id, settings.graph_api_url,
            settings.graph_api_version, pool_size=settings.send_concurrency,
        ),
        throughput_limiter=RateLimiter(connection, rate=settings.send_rate_limit * PACING_MARGIN, fresh_start=SLOT_HORIZON),
        pair_limiter=RateLimiter(connection, rate=PAIR_RATE[0], per=PAIR_RATE[1], burst=PAIR_BURST),
        page_limiter=_attempts(connection, PAGE_SUBMISSIONS),
        web_opt_ins=web_opt_ins,
        staff=StaffAccounts(engine),
        review_queue=ReviewQueue(engine, ledger),
        account_sign_ins=_attempts(connection, SIGN_INS_PER_ACCOUNT),
        network_sign_ins=_attempts(connection, SIGN_INS_PER_NETWORK),
        handlers=Context(ledger, outbox, keywords, replies, campaigns, web_opt_ins),
        forward_queue=ForwardQueue(engine, first_retry=timedelta(seconds=settings.forward_retry_seconds)),
    )


def _attempts(connection: redis.Redis, budget: tuple[int, int]) -> RateLimiter:
    """A limit of `budget[0]` attempts per `budget[1]` seconds, all of which may come at once."""
    attempts, seconds = budget
    return RateLimiter(connection, rate=attempts, per=seconds, burst=attempts)


def warn_without_catalog(settings: Settings) -> None:
    """Say once, as a process starts serving, when template sends are decided on the caller's word (SPEC §7)."""
    if not settings.whatsapp_business_account_id:
        log.warning("WHATSAPP_BUSINESS_ACCOUNT_ID is not set: template sends are decided on the category their sender gives, not on Meta's")


def sync_templates(services: Services) -> int:
    """Replace the template catalog with Meta's; how many templates it holds. Raises SyncFailed,
    and notes why for /healthz until a sync succeeds (best effort: Redis may be what failed)."""
    waba_id = services.settings.whatsapp_business_account_id
    if not waba_id:
        raise SyncFailed("set WHATSAPP_BUSINESS_ACCOUNT_ID to read the account's template catalog")
    try:
        count = services.templates.sync(services.cloud_api.message_templates(waba_id))
    except SyncFailed as failed:
        with contextlib.suppress(redis.RedisError):
            services.redis.set(SYNC_FAILURE, json.dumps({"at": services.templates.clock().isoformat(), "reason": str(failed)}))
        raise
    with contextlib.suppress(redis.RedisError):
        services.redis.delete(SYNC_FAILURE)
    return count


def last_sync_failure(services: Services) -> dict[str, str] | None:
    """When the last template sync failed and why, if no sync succeeded since: {"at", "reason"}."""
    noted = services.redis.get(SYNC_FAILURE)
    return json.loads(noted) if noted else None


def ledger_key(settings: Settings) -> LedgerKey:
    """The ledger's keys, from LEDGER_SIGNING_KEY or, for local runs, a key kept in instance/."""
    return LedgerKey(settings.ledger_signing_key or instance_secret("ledger_signing_key"))


def register(app: Flask, services: Services) -> None:
    app.extensions[_EXTENSION] = services


def services_of(app: Flask) -> Services:
    return app.extensions[_EXTENSION]


def current_services() -> Services:
    """The services of the app handling this request or command."""
    return services_of(current_app)
