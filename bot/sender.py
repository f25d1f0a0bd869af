"""Sending one queued message: the last consent check, pacing, the Cloud API call, the outcome.

Policy is asked again here, just before the call, so a STOP recorded after queuing wins
(the message becomes `blocked`). Pacing has two limits shared through Redis: the phone
number's messages/second and Meta's pair rate to one user. A message waiting longer for the
pair rate than `PAIR_MAX_WAIT` goes back to the queue instead of holding a send slot.

Each send runs on its own thread, but the limiter calls, the consent checks and the records
of sends that threads make at the same moment go out together (bot.batcher): one Redis call,
one query, one transaction for a whole wave of messages instead of one per message.
"""
from __future__ import annotations

import enum
import logging
import time
from datetime import timedelta
from typing import Callable

import sqlalchemy as sa

from bot.batcher import Batcher
from bot.cloud_api import CloudApi
from bot.consent import delivery_marketing_opt_out
from bot.graph_errors import CloudApiError, MarketingOptedOut, WindowClosed
from bot.ledger import utc_now
from bot.limiter import RateLimiter
from bot.outbox import Outbox, StoredMessage
from bot.phone import mask
from bot.policy import Decision, Refusal

log = logging.getLogger(__name__)

PAIR_RATE = (1, 6.0)  # Meta: about one message every 6 seconds to the same user...
PAIR_BURST = 5  # ...with short bursts tolerated (a reply right after a welcome)
PAIR_MAX_WAIT = 2.0  # seconds a worker thread may wait for the pair rate
PACING_MARGIN = 0.97  # pace a little under the cap: network jitter must not push a second over it
LATE_SLOT = 0.02  # seconds a thread may send after its slot; later, it takes a new slot
MAX_ATTEMPTS = 8
RECORD_PATIENCE = 600.0  # seconds a thread keeps trying to record a call that was made
MAX_BACKOFF = timedelta(hours=1)


class Outcome(str, enum.Enum):
    SENT = "sent"
    BLOCKED = "blocked"
    FAILED = "failed"
    RETRY = "retry"  # back in the queue, due later
    SKIPPED = "skipped"  # not due, already done, or claimed by another worker


class Sender:
    def __init__(
        self,
        outbox: Outbox,
        api: CloudApi,
        throughput: RateLimiter,
        pair: RateLimiter,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.outbox = outbox
        self.api = api
        self.sleep = sleep
        self._number = api.phone_number_id or "unconfigured"
        self._pair_slots = Batcher(lambda keys: pair.reserve_many(keys, max_wait=PAIR_MAX_WAIT), "pair-slots")
        self._send_slots = Batcher(throughput.reserve_many, "send-slots")
        self._decisions = Batcher(outbox.decide_many, "consent-checks")
        self._records = Batcher(outbox.mark_sent_many, "send-records")

    def send(self, message_id: str) -> Outcome:
        """Claim one message and send it."""
        message = self.outbox.claim(message_id)
        if message is None:
            return Outcome.SKIPPED
        return self.send_claimed(message)

    def send_claimed(self, message: StoredMessage) -> Outcome:
        """Send a message this worker has claimed (Outbox.claim_many) and record the outcome."""
        pair_slot = self._pair_slots.call(f"whatsapp:pair:{self._number}:{message.wa_id}")
        if not pair_slot.reserved:
            return self._retry(message, timedelta(seconds=pair_slot.wait))
        self.sleep(pair_slot.wait)
        decision = self._decide_in_send_slot(message)
        if not decision.allowed:
            self.outbox.mark_blocked(message.id, decision.reason)
            log.info("message %s to %s blocked at send time: %s", message.id, mask(message.wa_id), decision.reason.value)
            return Outcome.BLOCKED
        try:
            meta_id = self._call(message)
        except CloudApiError as error:
            return self._failed(message, error)
        self._keep_trying(message, lambda: self._records.call((message.id, meta_id, decision.consent_event_id)))
        return Outcome.SENT

    def _keep_trying(self, message: StoredMessage, record: Callable[[], object]) -> None:
        """Record what a Cloud API call did, waiting out a database outage: given up, the
        message would stay queued and be sent again once its lease ran out."""
        pause, deadline = 0.5, time.monotonic() + RECORD_PATIENCE
        while True:
            try:
                record()
                return
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as failure:
                if time.monotonic() > deadline:
                    raise
                log.warning("cannot record the outcome of message %s yet (%s); trying again", message.id, type(failure).__name__)
                self.sleep(pause)
                pause = min(pause * 2, 10.0)

    def _decide_in_send_slot(self, message: StoredMessage) -> Decision:
        """Sleep until this send's slot, then ask the policy: consent is asked after the waits,
        right before the call, so a STOP that landed meanwhile wins.

        A slot missed by more than LATE_SLOT, counting the consent check, is given up for a new
        one: a thread that wakes late (a busy CPU) and sends anyway would crowd the next second,
        and Meta counts arrivals.
        """
        while True:
            wait = self._send_slots.call(f"whatsapp:rate:{self._number}").wait
            slot = time.monotonic() + wait
            self.sleep(wait)
            decision = self._decisions.call((message.wa_id, message.kind))
            if not decision.allowed or time.monotonic() - slot <= LATE_SLOT:
                return decision

    def _call(self, message: StoredMessage) -> str:
        if "template" in message.content:
            template = message.content["template"]
            return self.api.send_template(message.wa_id, template["name"], template["language"], template["components"])
        return self.api.send_text(message.wa_id, message.content["text"])

    def _failed(self, message: StoredMessage, error: CloudApiError) -> Outcome:
        if error.retryable and message.attempts < MAX_ATTEMPTS:
            backoff = min(error.retry_after * 2 ** (message.attempts - 1), max(MAX_BACKOFF, error.retry_after))
            return self._retry(message, backoff, error)
        reason = Refusal.WINDOW_CLOSED.value if isinstance(error, WindowClosed) else "send_error"
        if isinstance(error, MarketingOptedOut):  # the ledger first: a marketing opt-out must not be lost
            evidence = {"message_id": message.id, "error_code": error.code, "details": error.details}
            draft = delivery_marketing_opt_out(message.wa_id, f"send-error-131050:{message.id}", "sender", evidence)
            self._keep_trying(message, lambda: self.outbox.ledger.append(draft))
        self._keep_trying(message, lambda: self.outbox.mark_failed(message.id, reason, error.code, error.details or str(error)))
        log.warning("message %s to %s failed: %s (code %s)", message.id, mask(message.wa_id), type(error).__name__, error.code)
        return Outcome.FAILED

    def _retry(self, message: StoredMessage, delay: timedelta, error: CloudApiError | None = None) -> Outcome:
        """Back to the queue, due after `delay`; the sweeper queues it again then."""
        due = utc_now() + delay
        self.outbox.release(message.id, due, error.code if error else None, str(error) if error else None)
        return Outcome.RETRY
