"""Consent-first WhatsApp bot: the application factory."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis
import sqlalchemy as sa
from flask import Flask, jsonify, request
from flask.sessions import SessionInterface
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from bot import console, health
from bot.console.rendering import error_page, in_console
from bot.inbound import webhook
from bot.services import build_services, register
from bot.settings import INSTANCE, PROJECT_ROOT, Settings, instance_secret, load_settings
from bot.staff import api, pages
from bot.staff.cli import consent_cli, db_cli, keywords_cli
from bot.staff.forward_cli import forward_cli
from bot.staff.send_cli import campaign_cli, send_cli
from bot.staff.staff_cli import staff_cli
from bot.staff.templates_cli import templates_cli

app_log = logging.getLogger(__name__)
MAX_BODY = 4 * 1024 * 1024  # Meta's webhook batches are far smaller


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from the environment, or from `test_config` (environment variable names to
    values) alone. Bad configuration (env, keyword file, reply texts) stops it here, with the reason.
    It does not touch the database: each process checks the schema where it starts (`require_current`)."""
    app = Flask(__name__, instance_path=str(INSTANCE), template_folder=str(PROJECT_ROOT / "templates"))
    if test_config is None:
        settings = load_settings()
    else:
        settings = Settings.from_env({name: str(value) for name, value in test_config.items() if value is not None})
        app.testing = bool(test_config.get("TESTING"))
    services = build_services(settings)
    register(app, services)
    app.session_interface = _NoSessions()
    app.config["SECRET_KEY"] = settings.secret_key or instance_secret("secret_key")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    app.register_blueprint(health.bp)
    app.register_blueprint(webhook.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(console.bp)
    if settings.trusted_proxies:  # behind a load balancer: the client's address is in X-Forwarded-For
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies)  # type: ignore[method-assign]
    app.register_error_handler(HTTPException, _json_error)
    app.register_error_handler(sa.exc.DataError, _unstorable)
    app.register_error_handler(sa.exc.SQLAlchemyError, _unavailable)
    app.register_error_handler(redis.RedisError, _unavailable)
    for group in (consent_cli, keywords_cli, send_cli, campaign_cli, templates_cli, staff_cli, forward_cli, db_cli):
        app.cli.add_command(group)
    return app


class _NoSessions(SessionInterface):
    """The bot keeps no Flask session (the pages sign their own form tokens, the console its own
    cookie). Flask's cookie session would build a signing serializer for every request, every
    webhook POST included."""

    def open_session(self, app: Flask, request):
        return self.make_null_session(app)

    def save_session(self, app: Flask, session, response) -> None:
        pass


def _unstorable(_failure: sa.exc.DataError):
    """The database refused a value (a NUL character, say): the request's fault, not an outage."""
    return jsonify(error="invalid_value", detail="a value in the request cannot be stored or looked up"), 422


def _unavailable(failure: Exception):
    """The database or Redis failed: a 503 the caller may retry, never a 500 with a traceback."""
    app_log.error("request failed, database or Redis unavailable: %s", type(failure).__name__)
    return jsonify(error="unavailable", detail="the database or Redis is unavailable; retry later"), 503


def _json_error(failure: HTTPException):
    """Errors are `{"error", "detail"}` JSON, never an HTML page or a traceback; except in the
    console, whose own handlers miss errors raised before a view is chosen (404, 405)."""
    if in_console(request.path):
        return error_page(failure)
    code = (failure.name or "error").lower().replace(" ", "_")
    return jsonify(error=code, detail=failure.description), failure.code
