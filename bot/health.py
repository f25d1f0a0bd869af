"""GET /healthz: 200 when the ledger database and Redis answer, 503 naming the one that does not."""
from __future__ import annotations

import redis
import sqlalchemy as sa
from flask import Blueprint, jsonify

from bot.services import current_services

bp = Blueprint("health", __name__)


def _first_line(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@bp.get("/healthz")
def healthz():
    problems = []
    try:
        with current_services().engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as error:
        problems.append(f"database: {_first_line(error)}")
    try:
        current_services().redis.ping()
    except redis.RedisError as error:
        problems.append(f"redis: {_first_line(error)}")
    if problems:
        return jsonify(error="unhealthy", detail="; ".join(problems)), 503
    return jsonify(status="ok", database="ok", redis="ok")
