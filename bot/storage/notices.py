"""Reading the account notices Meta sent (bot.inbound.handlers.account keeps them), for the
console's account health page: the newest of a kind, and all of them newest first, a page at a
time. Nothing here knows Flask."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.storage.db import reading
from bot.storage.ledger import as_utc
from bot.storage.schema import account_notices


@dataclass(frozen=True)
class Notice:
    id: int
    field: str  # the webhook field (phone_number_quality_update ...) or billing_discrepancy
    event: str
    details: dict
    subject: str
    occurred_at: datetime | None  # when Meta says it happened, when it says
    received_at: datetime

    @property
    def at(self) -> datetime:
        """When it happened, as near as we know."""
        return self.occurred_at or self.received_at


class AccountNotices:
    def __init__(self, engine: Engine):
        self.engine = engine

    def newest(self, field: str) -> Notice | None:
        """The notice of this field that happened last (by Meta's time where it gave one): what Meta last reported."""
        happened = sa.func.coalesce(account_notices.c.occurred_at, account_notices.c.received_at)
        query = sa.select(account_notices).where(account_notices.c.field == field).order_by(happened.desc(), account_notices.c.id.desc())
        return next(iter(self._read(query.limit(1))), None)

    def page(self, limit: int, before: int | None = None) -> list[Notice]:
        """Up to `limit` notices, the last received first; `before` an id continues after that one."""
        query = sa.select(account_notices).order_by(account_notices.c.id.desc()).limit(limit)
        if before is not None:
            query = query.where(account_notices.c.id < before)
        return self._read(query)

    def _read(self, query: sa.Select) -> list[Notice]:
        with reading(self.engine) as conn:
            return [_notice(row) for row in conn.execute(query).mappings()]


def _notice(row: sa.RowMapping) -> Notice:
    try:
        details = json.loads(row["details"])
    except ValueError:
        details = {}
    return Notice(
        row["id"], row["field"], row["event"], details if isinstance(details, dict) else {"details": details}, row["subject"] or "",
        as_utc(row["occurred_at"]) if row["occurred_at"] else None, as_utc(row["received_at"]),
    )
