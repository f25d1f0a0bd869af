"""Consent-first WhatsApp bot: the application factory."""
from __future__ import annotations

import logging
import os
import secrets
from datetime import timedelta
from pathlib import Path

import redis
import sqlalchemy as sa
from dotenv import load_dotenv
from flask import Flask, jsonify
from flask.sessions import SessionInterface
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from bot.campaigns import Campaigns
from bot.config import ConfigError, settings_from_env
from bot.db import init_schema, make_engine
from bot.cloud_api import CloudApi
from bot.keywords import KeywordFileError, load_keywords
from bot.ledger import Ledger
from bot.limiter import RateLimiter
from bot.opt_out_marks import OptOutMarks
from bot.outbox import Outbox
from bot.policy import ImplicitCoverage
from bot.queues import enqueuer, make_queues
from bot.replies import Replies, ReplyTextError
from bot.sender import PACING_MARGIN, PAIR_BURST, PAIR_RATE, SLOT_HORIZON
from handlers import Context

app_log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# What create_app raises for a configuration that cannot work; the message is the one-line reason.
STARTUP_ERRORS = (ConfigError, KeywordFileError, ReplyTextError)
PAGE_SUBMISSIONS = (5, 600)  # hosted-page submissions per IP and per number: 5 per 10 minutes


def default_database_url() -> str:
    """The SQLite ledger under instance/ that serves when DATABASE_URL is not set (made here if missing)."""
    instance = PROJECT_ROOT / "instance"
    instance.mkdir(exist_ok=True)
    return f"sqlite:///{instance / 'ledger.db'}"


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app. Bad configuration (env, keyword file, reply texts) stops it here, with the reason."""
    app = Flask(__name__, instance_path=str(PROJECT_ROOT / "instance"), template_folder=str(PROJECT_ROOT / "templates"))
    if test_config is None:
        load_dotenv(PROJECT_ROOT / ".env")
        app.config.from_mapping(settings_from_env(os.environ))
    else:
        app.config.from_mapping(settings_from_env({}))
        app.config.from_mapping(test_config)

    app.session_interface = _NoSessions()
    app.config["DATABASE_URL"] = app.config["DATABASE_URL"] or default_database_url()
    app.config["SECRET_KEY"] = app.config["SECRET_KEY"] or _instance_secret(Path(app.instance_path))
    keywords_path = Path(app.config["KEYWORDS_FILE"])
    if not keywords_path.is_absolute():
        keywords_path = PROJECT_ROOT / keywords_path

    keywords = load_keywords(keywords_path)
    replies = Replies(PROJECT_ROOT / "templates" / "replies", app.config["BUSINESS_NAME"], keywords)
    replies.check()
    engine = make_engine(app.config["DATABASE_URL"])
    try:
        init_schema(engine)
    except sa.exc.OperationalError as error:
        location = engine.url.render_as_string(hide_password=True)
        raise ConfigError(f"cannot open the ledger database {location}: {str(error.orig).strip().splitlines()[0]}") from None

    connection = redis.Redis.from_url(
        app.config["REDIS_URL"], socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
    )
    opt_out_marks = OptOutMarks(connection)
    ledger = Ledger(engine, opted_out=opt_out_marks.mark)
    coverage = ImplicitCoverage(
        utility=app.config["IMPLICIT_CONSENT_COVERS_UTILITY"],
        authentication=app.config["IMPLICIT_CONSENT_COVERS_AUTHENTICATION"],
    )
    app.extensions.update(
        keywords=keywords,
        replies=replies,
        ledger=ledger,
        redis=connection,
        opt_out_marks=opt_out_marks,
        outbox=Outbox(
            engine, ledger, enqueuer(make_queues(connection)), coverage,
            lease=timedelta(seconds=app.config["SEND_LEASE_SECONDS"]),
        ),
        cloud_api=CloudApi(
            app.config["WHATSAPP_TOKEN"], app.config["WHATSAPP_PHONE_NUMBER_ID"], app.config["GRAPH_API_URL"],
            app.config["GRAPH_API_VERSION"], pool_size=app.config["SEND_CONCURRENCY"],
        ),
        throughput_limiter=RateLimiter(connection, rate=app.config["SEND_RATE_LIMIT"] * PACING_MARGIN, fresh_start=SLOT_HORIZON),
        pair_limiter=RateLimiter(connection, rate=PAIR_RATE[0], per=PAIR_RATE[1], burst=PAIR_BURST),
        page_limiter=RateLimiter(connection, rate=PAGE_SUBMISSIONS[0], per=PAGE_SUBMISSIONS[1], burst=PAGE_SUBMISSIONS[0]),
    )

    app.extensions["campaigns"] = Campaigns(
        engine, ledger, app.extensions["outbox"], max_opt_out_rate=app.config["CAMPAIGN_MAX_OPT_OUT_RATE"]
    )
    app.extensions["handlers"] = Context(ledger, app.extensions["outbox"], keywords, replies, app.extensions["campaigns"])
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_CONTENT_LENGTH"] or 4 * 1024 * 1024  # Meta's batches are far smaller

    from bot import health, pages, staff_api, webhook
    from bot.cli import consent_cli, keywords_cli
    from bot.send_cli import campaign_cli, send_cli
    from sandbox.cli import simulate

    app.register_blueprint(health.bp)
    app.register_blueprint(webhook.bp)
    app.register_blueprint(staff_api.bp)
    app.register_blueprint(pages.bp)
    if app.config["TRUSTED_PROXIES"]:  # behind a load balancer: the client's address is in X-Forwarded-For
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=app.config["TRUSTED_PROXIES"], x_proto=app.config["TRUSTED_PROXIES"])
    app.register_error_handler(HTTPException, _json_error)
    app.register_error_handler(sa.exc.DataError, _unstorable)
    app.register_error_handler(sa.exc.SQLAlchemyError, _unavailable)
    app.register_error_handler(redis.RedisError, _unavailable)
    app.cli.add_command(consent_cli)
    app.cli.add_command(keywords_cli)
    app.cli.add_command(send_cli)
    app.cli.add_command(campaign_cli)
    app.cli.add_command(simulate)  # talks to the sandbox over HTTP; refuses when WHATSAPP_TOKEN is set
    return app


class _NoSessions(SessionInterface):
    """The bot keeps no Flask session (the pages sign their own form tokens). Flask's cookie
    session would build a signing serializer for every request, every webhook POST included."""

    def open_session(self, app: Flask, request):
        return self.make_null_session(app)

    def save_session(self, app: Flask, session, response) -> None:
        pass


def _instance_secret(instance: Path) -> str:
    """Without SECRET_KEY, one kept in instance/ (fine on one host; set SECRET_KEY when there are several)."""
    path = instance / "secret_key"
    if not path.exists():
        os.makedirs(instance, exist_ok=True)
        draft = instance / f".secret_key.{os.getpid()}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32))
        try:
            os.link(draft, path)  # atomic: when web processes start together, the first key wins for all
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    return path.read_text().strip()


def _unstorable(_failure: sa.exc.DataError):
    """The database refused a value (a NUL character, say): the request's fault, not an outage."""
    return jsonify(error="invalid_value", detail="a value in the request cannot be stored or looked up"), 422


def _unavailable(failure: Exception):
    """The database or Redis failed: a 503 the caller may retry, never a 500 with a traceback."""
    app_log.error("request failed, database or Redis unavailable: %s", type(failure).__name__)
    return jsonify(error="unavailable", detail="the database or Redis is unavailable; retry later"), 503


def _json_error(failure: HTTPException):
    """Errors are `{"error", "detail"}` JSON, never an HTML page or a traceback."""
    code = (failure.name or "error").lower().replace(" ", "_")
    return jsonify(error=code, detail=failure.description), failure.code
