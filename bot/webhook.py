"""The webhook Meta calls: GET for the subscription handshake, POST for notifications.

POST checks `X-Hub-Signature-256` over the raw bytes (constant-time), parses every event of
the batch and hands each to its handler, all of them in one transaction shared with the
POSTs that arrived at the same moment (`handlers.dispatch`). It answers 200 only once that
transaction has committed, so every consent-affecting event is recorded; if the database or
Redis fails it answers 503, Meta retries, and the idempotent handlers finish what was left
without doubling anything.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging

import redis
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify, request

from bot.batcher import Combiner
from bot.db import WriteConflict
from bot.webhook_events import Unrecognized, parse
from handlers.dispatch import record_posts

log = logging.getLogger(__name__)
bp = Blueprint("webhook", __name__)


@bp.record_once
def _set_up_intake(state) -> None:
    """POSTs that wait together are recorded together (handlers.dispatch)."""
    extensions = state.app.extensions
    extensions["webhook_intake"] = Combiner(lambda posts: record_posts(extensions["handlers"], posts))


def error(status: int, code: str, detail: str) -> tuple[Response, int]:
    return jsonify(error=code, detail=detail), status


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """Meta signs the exact bytes: `sha256=` + hex HMAC-SHA256 keyed with the app secret."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header[len("sha256="):].strip().lower())


@bp.get("/webhook")
def handshake():
    token = current_app.config["WHATSAPP_VERIFY_TOKEN"]
    if not token:
        return error(403, "not_configured", "WHATSAPP_VERIFY_TOKEN is not set, so no subscription can be verified")
    given = request.args.get("hub.verify_token", "")
    if request.args.get("hub.mode") != "subscribe" or not hmac.compare_digest(given.encode(), token.encode()):
        return error(403, "forbidden", "hub.mode must be subscribe and hub.verify_token must match")
    return Response(request.args.get("hub.challenge", ""), mimetype="text/plain")


@bp.post("/webhook")
def receive():
    secret = current_app.config["WHATSAPP_APP_SECRET"]
    if not secret and not current_app.config["WEBHOOK_INSECURE_DEV"]:
        log.error("POST /webhook refused: WHATSAPP_APP_SECRET is not set")
        return error(503, "not_configured", "WHATSAPP_APP_SECRET is not set; refusing unsigned webhooks (WEBHOOK_INSECURE_DEV=1 allows them in development)")
    body = request.get_data(cache=False)
    if secret and not signature_matches(secret, body, request.headers.get("X-Hub-Signature-256")):
        return error(401, "bad_signature", "missing or wrong X-Hub-Signature-256")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        payload = None
    events = parse(payload) if payload is not None else [Unrecognized("body is not JSON", body.decode("utf-8", "replace")[:100_000])]
    try:
        current_app.extensions["webhook_intake"].call(events)
    except (sa.exc.SQLAlchemyError, redis.RedisError, WriteConflict) as failure:
        log.error("webhook not recorded, Meta will retry: %s", type(failure).__name__)
        return error(503, "unavailable", "could not record the events now; retry later")
    return jsonify(status="ok", events=len(events))
