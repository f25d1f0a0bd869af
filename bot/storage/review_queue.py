"""The possible-opt-out review queue, read from the ledger (bot.domain.review says why there).

An item waits while no event holds its decision's source reference; the partial index on
possible opt-outs and the unique index on source references make the queue one indexed
anti-join, whatever the size of the ledger.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.domain.consent import Action, ConsentEvent
from bot.domain.review import REVIEW_REF_PREFIX, Decision, decision_draft
from bot.storage.db import reading
from bot.storage.ledger import Ledger, to_event
from bot.storage.schema import consent_events, merged_people

_DECISION = consent_events.alias("decision")
# A literal, not a parameter: PostgreSQL uses a partial index only for a predicate it can see.
_IS_POSSIBLE = consent_events.c.action == sa.literal_column(f"'{Action.POSSIBLE_OPT_OUT.value}'")
_PERSON_NOW = sa.func.coalesce(  # after a merge, the person it belongs to now
    sa.select(merged_people.c.person_id).where(merged_people.c.absorbed == consent_events.c.person_id).scalar_subquery(),
    consent_events.c.person_id,
).label("person_now")
_WITH_DECISION = sa.join(
    consent_events, _DECISION, _DECISION.c.source_ref == sa.literal(REVIEW_REF_PREFIX) + consent_events.c.event_id, isouter=True
)
_DECISION_COLUMNS = [column.label(f"decision_{column.name}") for column in _DECISION.c]
_ITEMS = sa.select(consent_events, _PERSON_NOW, *_DECISION_COLUMNS).select_from(_WITH_DECISION).where(_IS_POSSIBLE)
_WAITING = _DECISION.c.seq.is_(None)
_PENDING = _ITEMS.where(_WAITING).order_by(consent_events.c.occurred_at, consent_events.c.seq).limit(sa.bindparam("limit"))
_PENDING_COUNT = sa.select(sa.func.count()).select_from(_WITH_DECISION).where(_IS_POSSIBLE, _WAITING)
_DECIDED = _ITEMS.where(_DECISION.c.seq.is_not(None)).order_by(_DECISION.c.seq.desc()).limit(sa.bindparam("limit"))
_ONE = _ITEMS.where(consent_events.c.event_id == sa.bindparam("event_id"))


@dataclass(frozen=True)
class ReviewItem:
    possible: ConsentEvent  # what the user said, as the bot recorded it
    person_id: str  # whose it is now
    decision: ConsentEvent | None = None  # the confirmation (an opt-out) or dismissal, once decided


class NotReviewable(LookupError):
    """No possible opt-out has this event id."""


class ReviewQueue:
    def __init__(self, engine: Engine, ledger: Ledger):
        self.engine = engine
        self.ledger = ledger

    def pending(self, limit: int = 50) -> tuple[list[ReviewItem], int]:
        """The oldest `limit` undecided items, and how many wait in all."""
        with reading(self.engine) as conn:
            rows = conn.execute(_PENDING, {"limit": limit}).mappings().all()
            waiting = conn.execute(_PENDING_COUNT).scalar_one()
        return [_item(row) for row in rows], waiting

    def decided(self, limit: int = 20) -> list[ReviewItem]:
        """The latest `limit` decisions, newest first: the queue's audit trail."""
        with reading(self.engine) as conn:
            return [_item(row) for row in conn.execute(_DECIDED, {"limit": limit}).mappings()]

    def item(self, event_id: str) -> ReviewItem | None:
        with reading(self.engine) as conn:
            row = conn.execute(_ONE, {"event_id": event_id}).mappings().first()
        return _item(row) if row else None

    def decide(self, event_id: str, decision: Decision, recorded_by: str) -> ConsentEvent:
        """Record the decision, or return the one recorded already when it was the same;
        another decision made meanwhile raises the ledger's SourceRefConflict."""
        found = self.item(event_id)
        if found is None:
            raise NotReviewable(event_id)
        return self.ledger.append(decision_draft(found.possible, decision, found.person_id, recorded_by))


def _item(row: Mapping) -> ReviewItem:
    decided = {name.removeprefix("decision_"): value for name, value in row.items() if name.startswith("decision_")}
    decision = to_event(decided) if decided["seq"] is not None else None
    return ReviewItem(to_event(row), row["person_now"], decision)
