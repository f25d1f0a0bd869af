"""The signed webhook items nobody could read (bot.storage.intake keeps them), for staff to
inspect in the console and mark handled, recording who and when. Nothing here knows Flask."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.storage.db import reading, writer
from bot.storage.ledger import as_utc, utc_now
from bot.storage.schema import unread_webhooks


@dataclass(frozen=True)
class UnreadItem:
    id: int
    received_at: datetime
    reason: str
    raw: str  # as it came
    handled_at: datetime | None
    handled_by: str | None  # staff:EMAIL

    def pretty(self) -> str:
        """The raw item indented for reading; as it came when it is not JSON."""
        try:
            return json.dumps(json.loads(self.raw), indent=2, ensure_ascii=False, sort_keys=True)
        except ValueError:
            return self.raw


class UnreadWebhooks:
    def __init__(self, engine: Engine):
        self.engine = engine

    def latest(self, limit: int, with_handled: bool = False) -> list[UnreadItem]:
        """Up to `limit` items, the last received first; those handled only `with_handled`."""
        query = sa.select(unread_webhooks).order_by(unread_webhooks.c.id.desc()).limit(limit)
        if not with_handled:
            query = query.where(unread_webhooks.c.handled_at.is_(None))
        with reading(self.engine) as conn:
            return [_item(row) for row in conn.execute(query).mappings()]

    def waiting(self) -> int:
        """How many items nobody has marked handled yet."""
        with reading(self.engine) as conn:
            return conn.execute(sa.select(sa.func.count()).where(unread_webhooks.c.handled_at.is_(None))).scalar_one()

    def get(self, item_id: int) -> UnreadItem | None:
        with reading(self.engine) as conn:
            row = conn.execute(sa.select(unread_webhooks).where(unread_webhooks.c.id == item_id)).mappings().first()
        return _item(row) if row else None

    def mark_handled(self, item_id: int, by: str) -> bool:
        """Record that `by` handled the item now; False when there is no such item or it was handled
        already (the first to mark it stays recorded)."""
        still_unread = (unread_webhooks.c.id == item_id) & unread_webhooks.c.handled_at.is_(None)
        with writer(self.engine).begin() as conn:
            marked = conn.execute(unread_webhooks.update().where(still_unread).values(handled_at=utc_now(), handled_by=by))
        return marked.rowcount == 1


def _item(row: sa.RowMapping) -> UnreadItem:
    handled_at = row["handled_at"]
    return UnreadItem(
        row["id"], as_utc(row["received_at"]), row["reason"], row["raw"], as_utc(handled_at) if handled_at else None, row["handled_by"],
    )
