"""A webhook POST's events, each handed to its handler, all in one transaction with the POSTs that came with it.

Under load many POSTs wait at once. Recording those that wait together in one transaction
(bot.inbound.batcher.Combiner) costs little more than recording one: one turn on the ledger head,
one statement per kind of row, one RQ call per queue. A POST that fails for its own reasons
must not fail its neighbours, so a group that fails for any reason but an outage is done
again one POST at a time.
"""
from __future__ import annotations

import logging

import redis
import sqlalchemy as sa

from bot.domain.consent import InvalidEvent
from bot.inbound.events import AccountNotice, InboundMessage, PreferenceUpdate, StatusUpdate, Unrecognized, WebhookEvent
from bot.inbound.handlers import Context
from bot.inbound.handlers.account import on_account_notice
from bot.inbound.handlers.conversation import on_message
from bot.inbound.handlers.preferences import on_preference
from bot.inbound.handlers.statuses import on_status
from bot.storage.intake import Intake, record
from bot.storage.ledger import utc_now
from bot.storage.schema import unread_webhooks

log = logging.getLogger(__name__)

# Nothing gets through these; doing the POSTs one at a time would only fail slower.
OUTAGES = (sa.exc.OperationalError, sa.exc.InterfaceError, redis.ConnectionError, redis.TimeoutError)


def record_posts(context: Context, posts: list[list[WebhookEvent]]) -> list[Exception | None]:
    """Record the events of these POSTs; for each POST, None or why it failed."""
    try:
        record_events(context, [event for post in posts for event in post])
        return [None] * len(posts)
    except OUTAGES:
        raise
    except Exception:
        if len(posts) == 1:
            raise
        log.warning("%d webhook POSTs failed together; recording them one at a time", len(posts))
        return [_failure_of(context, post) for post in posts]


def _failure_of(context: Context, post: list[WebhookEvent]) -> Exception | None:
    try:
        record_events(context, post)
        return None
    except Exception as failure:
        return failure


class _Refused(Exception):
    def __init__(self, index: int, reason: InvalidEvent):
        self.index, self.reason = index, reason


def record_events(context: Context, events: list[WebhookEvent]) -> None:
    """Handle every event in one transaction. An event the ledger refuses is kept as unread
    instead, and the whole is done again without it: its neighbours are recorded all the same."""
    events = list(events)

    def handle(intake: Intake) -> None:
        intake.lock_contacts((e.wa_id, e.timestamp) for e in events if isinstance(e, InboundMessage))
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


def _handle(context: Context, intake: Intake, event: WebhookEvent) -> None:
    if isinstance(event, InboundMessage):
        on_message(context, intake, event)
    elif isinstance(event, StatusUpdate):
        on_status(context, intake, event)
    elif isinstance(event, PreferenceUpdate):
        on_preference(context, intake, event)
    elif isinstance(event, AccountNotice):
        on_account_notice(context, intake, event)
    else:
        log.warning("kept an unread webhook item for inspection: %s", event.reason)
        intake.keep(unread_webhooks, received_at=utc_now(), reason=event.reason[:255], raw=event.raw)
