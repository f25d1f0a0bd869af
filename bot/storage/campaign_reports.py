"""What the console shows of one campaign besides its counts: failures by Meta error code, when
its recipients were reached and opted out (for the opt-out rate over time), and every
recipient's message for the CSV download. Each is one query, whatever the list's size; the
download streams. Nothing here knows Flask.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.storage.campaigns import REACHED, opted_out_after_sent
from bot.storage.db import reading
from bot.storage.ledger import as_utc
from bot.storage.outbox import MessageState
from bot.storage.schema import consent_events, identities
from bot.storage.schema import outbound_messages as messages

RECIPIENT_COLUMNS = ("recipient", "state", "reason", "error_code", "meta_message_id", "sent_at")


@dataclass(frozen=True)
class Failure:
    error_code: int | None  # Meta's, None when the send failed without one
    reason: str | None  # the bot's word for it
    count: int


@dataclass(frozen=True)
class Reach:
    """When the campaign reached each recipient, and when each of them opted out after; sorted."""

    reached: list[datetime]
    opted_out: list[datetime]  # each person once: their first opt-out after they were reached


class CampaignReports:
    def __init__(self, engine: Engine):
        self.engine = engine

    def failures(self, campaign_id: str) -> list[Failure]:
        """The campaign's failed messages per error code and reason, the most frequent first."""
        query = (
            sa.select(messages.c.error_code, messages.c.reason, sa.func.count().label("count"))
            .where(messages.c.campaign_id == campaign_id, messages.c.state == MessageState.FAILED.value)
            .group_by(messages.c.error_code, messages.c.reason)
            .order_by(sa.desc("count"), messages.c.error_code)
        )
        with reading(self.engine) as conn:
            return [Failure(*row) for row in conn.execute(query)]

    def reach(self, campaign_id: str) -> Reach:
        sent = (
            sa.select(messages.c.sent_at)
            .where(messages.c.campaign_id == campaign_id, messages.c.state.in_(REACHED), messages.c.sent_at.is_not(None))
            .order_by(messages.c.sent_at)
        )
        first_opt_outs = opted_out_after_sent(sa.func.min(consent_events.c.occurred_at)).group_by(identities.c.person_id)
        with reading(self.engine) as conn:
            reached = [as_utc(at) for at in conn.execute(sent).scalars()]
            opted_out = sorted(as_utc(at) for at in conn.execute(first_opt_outs, {"campaign_id": campaign_id}).scalars())
        return Reach(reached, opted_out)

    def recipients(self, campaign_id: str) -> Iterator[tuple]:
        """Every message of the campaign as RECIPIENT_COLUMNS, read in batches as it is consumed."""
        query = (
            sa.select(*(messages.c[name] for name in RECIPIENT_COLUMNS))
            .where(messages.c.campaign_id == campaign_id)
            .order_by(messages.c.created_at, messages.c.id)
        )
        with self.engine.connect() as conn:  # a transaction: PostgreSQL's server-side cursor needs one
            for row in conn.execution_options(stream_results=True, yield_per=1000).execute(query):
                yield (*row[:-1], as_utc(row.sent_at) if row.sent_at else None)
