"""Consent-first WhatsApp bot: the application factory."""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import redis
import sqlalchemy as sa
from dotenv import load_dotenv
from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from bot.config import ConfigError, settings_from_env
from bot.db import init_schema, make_engine
from bot.cloud_api import CloudApi
from bot.keywords import KeywordFileError, load_keywords
from bot.ledger import Ledger
from bot.limiter import RateLimiter
from bot.outbox import Outbox
from bot.policy import ImplicitCoverage
from bot.queues import enqueuer, make_queues
from bot.replies import Replies, ReplyTextError
from bot.sender import PACING_MARGIN, PAIR_BURST, PAIR_RATE
from handlers import Context

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# What create_app raises for a configuration that cannot work; the message is the one-line reason.
STARTUP_ERRORS = (ConfigError, KeywordFileError, ReplyTextError)


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

    app.config["DATABASE_URL"] = app.config["DATABASE_URL"] or default_database_url()
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

    ledger = Ledger(engine)
    connection = redis.Redis.from_url(
        app.config["REDIS_URL"], socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
    )
    coverage = ImplicitCoverage(
        utility=app.config["IMPLICIT_CONSENT_COVERS_UTILITY"],
        authentication=app.config["IMPLICIT_CONSENT_COVERS_AUTHENTICATION"],
    )
    app.extensions.update(
        keywords=keywords,
        replies=replies,
        ledger=ledger,
        redis=connection,
        outbox=Outbox(
            engine, ledger, enqueuer(make_queues(connection)), coverage,
            lease=timedelta(seconds=app.config["SEND_LEASE_SECONDS"]),
        ),
        cloud_api=CloudApi(
            app.config["WHATSAPP_TOKEN"], app.config["WHATSAPP_PHONE_NUMBER_ID"], app.config["GRAPH_API_URL"],
            app.config["GRAPH_API_VERSION"], pool_size=app.config["SEND_CONCURRENCY"],
        ),
        throughput_limiter=RateLimiter(connection, rate=app.config["SEND_RATE_LIMIT"] * PACING_MARGIN),
        pair_limiter=RateLimiter(connection, rate=PAIR_RATE[0], per=PAIR_RATE[1], burst=PAIR_BURST),
    )

    app.extensions["handlers"] = Context(ledger, app.extensions["outbox"], keywords, replies)
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_CONTENT_LENGTH"] or 4 * 1024 * 1024  # Meta's batches are far smaller

    from bot import health, webhook
    from bot.cli import consent_cli, keywords_cli
    from sandbox.cli import simulate

    app.register_blueprint(health.bp)
    app.register_blueprint(webhook.bp)
    app.register_error_handler(HTTPException, _json_error)
    app.cli.add_command(consent_cli)
    app.cli.add_command(keywords_cli)
    app.cli.add_command(simulate)  # talks to the sandbox over HTTP; refuses when WHATSAPP_TOKEN is set
    return app


def _json_error(failure: HTTPException):
    """Errors are `{"error", "detail"}` JSON, never an HTML page or a traceback."""
    code = (failure.name or "error").lower().replace(" ", "_")
    return jsonify(error=code, detail=failure.description), failure.code
