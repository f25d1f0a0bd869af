"""A webhook POST's events, each handed to its handler, all in one transaction with the POSTs that came with it.

Under load many POSTs wait at once. Recording those that wait together in one transaction
(bot.inbound.batcher.Combiner) costs little more than recording one: one turn on the ledger head,
one statement per kind of row, one RQ call per queue. A POST that fails for its own reasons
must not fail its neighbours, so a group that fails for any reason but an outage is done
again one POST at a time, and a POST that still fails one item at a time: an item the ledger
or the database refuses is kept as unread, and never hides the STOP beside it.
"""
from __future__ import annotations

import logging

import redis
import sqlalchemy as sa

from bot.domain.consent import InvalidEvent
from bot.inbound.events import (
    MARKETING_STOPPED,
    AccountNotice,
    IdentityChange,
    InboundMessage,
    MessageType,
    PreferenceUpdate,
    StatusUpdate,
    Unrecognized,
    WebhookEvent,
)
from bot.inbound.handlers import Context
from bot.inbound.handlers.account import on_account_notice
from bot.inbound.handlers.conversation import on_message
from bot.inbound.handlers.identities import on_identity_change
from bot.inbound.handlers.preferences import on_preference
from bot.inbound.handlers.statuses import on_status
from bot.storage.intake import Intake, record
from bot.storage.people import Move, Sighting

log = logging.getLogger(__name__)

# Nothing gets through these; doing the POSTs one at a time would only fail slower.
OUTAGES = (sa.exc.OperationalError, sa.exc.InterfaceError, redis.ConnectionError, redis.TimeoutError)


def record_posts(context: Context, posts: list[list[WebhookEvent]]) -> list[Exception | None]:
    """Record the events of these POSTs; for each POST, None or why it failed (an outage, or a
    fault of ours: Meta delivers it again, and what was recorded is not recorded twice)."""
    try:
        record_events(context, [event for post in posts for event in post])
        return [None] * len(posts)
    except OUTAGES:
        raise
    except Exception:
        if len(posts) == 1:
            return [_record_each(context, posts[0])]
        log.warning("%d webhook POSTs failed together; recording them one at a time", len(posts))
        return [_record_alone(context, post) for post in posts]


def _record_alone(context: Context, post: list[WebhookEvent]) -> Exception | None:
    try:
        record_events(context, post)
        return None
    except OUTAGES as outage:
        return outage
    except Exception:
        return _record_each(context, post)


def _record_each(context: Context, post: list[WebhookEvent]) -> Exception | None:
    """A POST's events one at a time: each that the ledger or the database refuses is kept as
    unread with the reason, so that an odd item never hides the STOP beside it."""
    fault: Exception | None = None
    for event in post:
        try:
            record_events(context, [event])
        except OUTAGES as outage:
            return outage
        except Exception as error:
            if not _refused(error):
                log.error("a webhook item could not be recorded; Meta will deliver its POST again", exc_info=error)
                fault = fault or error
                continue
            reason = f"refused by the database: {_first_line(error)}"
            log.warning("kept a webhook item the database refused: %s", reason)
            try:
                record(context.ledger, context.outbox, lambda intake: intake.keep_unread(reason, repr(event)))
            except OUTAGES as outage:
                return outage
    return fault


def _refused(error: Exception) -> bool:
    """Refused for the item's own sake: by the ledger, by a constraint, or as a value that does not
    fit its column (a bare StatementError: SQLite's driver could not take the value). A missing
    table or column is not the item's fault: its POST fails and is delivered again."""
    return isinstance(error, (InvalidEvent, sa.exc.IntegrityError, sa.exc.DataError, OverflowError)) or type(error) is sa.exc.StatementError


def _first_line(failure: Exception) -> str:
    text = str(getattr(failure, "orig", None) or failure).strip()
    return f"{type(failure).__name__}: {text.splitlines()[0] if text else ''}"


class _Refused(Exception):
    def __init__(self, index: int, reason: InvalidEvent):
        self.index, self.reason = index, reason


def record_events(context: Context, events: list[WebhookEvent]) -> None:
    """Handle every event in one transaction. An event the ledger refuses is kept as unread
    instead, and the whole is done again without it: its neighbours are recorded all the same."""
    events = list(events)

    def handle(intake: Intake) -> None:
        intake.settle(
            (sighting for e in events if (sighting := _sighting(e)) is not None),
            (Move(e.left, e.joined, e.event_id, e.timestamp) for e in events if isinstance(e, IdentityChange)),
            ((e.sender, e.timestamp) for e in events if isinstance(e, InboundMessage) and e.type is not MessageType.REVOKE),
        )
        for index, event in enumerate(events):
            try:
                _handle(context, intake, event)
            except InvalidEvent as refused:
                raise _Refused(index, refused) from None

    while True:
        try:
            return record(context.ledger, context.outbox, handle)
        except _Refused as refused:
            event = events[refused.index]
            events[refused.index] = Unrecognized(f"refused by the ledger: {refused.reason}", repr(event))


def _sighting(event: WebhookEvent) -> Sighting | None:
    """Whose an item is: the identifiers it shows together, with its id as their link's evidence.
    A status names people only where it links identifiers or records an opt-out (131050): a
    campaign's statuses do not make a person of every number it reached."""
    if isinstance(event, InboundMessage):
        return Sighting(event.identifiers, event.message_id, event.timestamp)
    if isinstance(event, PreferenceUpdate):
        return Sighting(event.identifiers, f"preferences:{event.value}:{int(event.timestamp.timestamp())}", event.timestamp)
    if isinstance(event, StatusUpdate) and (len(event.recipients) > 1 or MARKETING_STOPPED in event.error_codes):
        only_link = MARKETING_STOPPED not in event.error_codes
        return Sighting(event.recipients, f"{event.meta_message_id}:{event.status.value}", event.timestamp, only_link) if event.recipients else None
    return None


def _handle(context: Context, intake: Intake, event: WebhookEvent) -> None:
    if isinstance(event, InboundMessage):
        on_message(context, intake, event)
    elif isinstance(event, IdentityChange):
        on_identity_change(context, intake, event)
    elif isinstance(event, StatusUpdate):
        on_status(context, intake, event)
    elif isinstance(event, PreferenceUpdate):
        on_preference(context, intake, event)
    elif isinstance(event, AccountNotice):
        on_account_notice(context, intake, event)
    else:
        log.warning("kept an unread webhook item for inspection: %s", event.reason)
        intake.keep_unread(event.reason, event.raw)
