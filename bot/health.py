"""GET /healthz: 200 when the ledger database and Redis answer, 503 naming the one that does not.

With WHATSAPP_BUSINESS_ACCOUNT_ID set it also tells the template catalog's state (how many
templates, read when, the last failed sync) as detail only: a stale catalog must not take the
webhook out of a load balancer's rotation; sends go on deciding on the last good catalog.
"""
from __future__ import annotations

import redis
import sqlalchemy as sa
from flask import Blueprint, jsonify

from bot.services import Services, current_services, last_sync_failure

bp = Blueprint("health", __name__)


def _first_line(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@bp.get("/healthz")
def healthz():
    services = current_services()
    problems = []
    try:
        with services.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as error:
        problems.append(f"database: {_first_line(error)}")
    try:
        services.redis.ping()
    except redis.RedisError as error:
        problems.append(f"redis: {_first_line(error)}")
    if problems:
        return jsonify(error="unhealthy", detail="; ".join(problems)), 503
    if not services.settings.whatsapp_business_account_id:
        return jsonify(status="ok", database="ok", redis="ok")
    templates, detail = _catalog_state(services)
    return jsonify(status="ok", database="ok", redis="ok", templates=templates, **({"detail": detail} if detail else {}))


def _catalog_state(services: Services) -> tuple[dict, str | None]:
    """The catalog's state, and a one-line warning when it is empty or its last sync failed."""
    count, synced_at = services.templates.freshness()
    failure = last_sync_failure(services)
    state = {"count": count, "synced_at": synced_at.isoformat() if synced_at else None, "last_sync_failure": failure}
    if failure is not None:
        kept = f"{count} template(s) read {synced_at.isoformat()}" if synced_at else "no catalog yet"
        return state, f"templates: the sync at {failure['at']} failed ({failure['reason']}); deciding on the last good one: {kept}"
    if count == 0:
        return state, "templates: the catalog is empty, so every template send is refused template_unknown"
    return state, None
