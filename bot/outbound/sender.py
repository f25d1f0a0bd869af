"""Sending queued messages: pacing, the last consent check, the Cloud API call, the outcome.

Pacing has two limits shared through Redis: the phone number's messages/second and Meta's
pair rate to one user. A message waiting longer for the pair rate than `PAIR_MAX_WAIT` goes
back to the queue instead of holding a send slot. Policy is asked again after the waits, just
before the call, so a STOP recorded after queuing wins (the message becomes `blocked`); and
right before the call its user's opt-out mark is read once more (bot.outbound.opt_out_marks), so a STOP
recorded after that check sends the message back to be checked again.

Each step takes many messages at once: at 1,000 messages/second, one Redis call or database
statement per message costs more CPU than the sends themselves. A worker's send loop
(bot.outbound.send_loop) runs the steps on whole waves of messages; `Sender.send` runs them on one.
"""
from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import redis
import sqlalchemy as sa

from bot.domain.consent import delivery_marketing_opt_out
from bot.domain.identity import mask
from bot.domain.policy import Decision, MessageKind, Refusal
from bot.outbound.cloud_api import Accepted, CloudApi
from bot.outbound.graph_errors import CloudApiError, MarketingOptedOut, NeedsPhoneNumber, WindowClosed
from bot.outbound.limiter import RateLimiter
from bot.outbound.opt_out_marks import Mark, OptOutMarks
from bot.storage.ledger import utc_now
from bot.storage.outbox import Outbox, StoredMessage

log = logging.getLogger(__name__)

PAIR_RATE = (1, 6.0)  # Meta: about one message every 6 seconds to the same user...
PAIR_BURST = 5  # ...with short bursts tolerated (a reply right after a welcome)
PAIR_MAX_WAIT = 2.0  # seconds a message may wait for the pair rate while claimed
PACING_MARGIN = 0.97  # pace a little under the cap: network jitter must not push a second over it
LATE_SLOT = 0.01  # seconds a call may go out after its slot; later, it takes a new slot
SLOT_HORIZON = 0.1  # seconds ahead that send slots are handed out: all a restarted Redis can have forgotten
MAX_ATTEMPTS = 8
RECORD_PATIENCE = 600.0  # seconds to keep trying to record calls that were made
MAX_BACKOFF = timedelta(hours=1)
# Failures that have a reason in SPEC's vocabulary; any other is a send_error.
_FAILURE_REASONS: dict[type[CloudApiError], str] = {
    WindowClosed: Refusal.WINDOW_CLOSED.value, NeedsPhoneNumber: Refusal.NEEDS_PHONE_NUMBER.value,
}


class Outcome(str, enum.Enum):
    SENT = "sent"
    BLOCKED = "blocked"
    FAILED = "failed"
    RETRY = "retry"  # back in the queue, due later
    PAUSED = "paused"  # back in the queue until its campaign resumes
    SKIPPED = "skipped"  # not due, already done, or claimed by another worker


Sent = tuple[StoredMessage, Accepted, Decision]  # a call Meta accepted: the message, Meta's answer, what allowed it


@dataclass(frozen=True)
class Cleared:
    """The policy's answer for a message now: what allows (or refuses) it, where it goes (the
    person's phone when known, else their BSUID), and its recipient's opt-out mark just before."""

    decision: Decision
    address: str
    mark: Mark


class Sender:
    def __init__(
        self,
        outbox: Outbox,
        api: CloudApi,
        throughput: RateLimiter,
        pair: RateLimiter,
        marks: OptOutMarks,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.outbox = outbox
        self.api = api
        self.sleep = sleep
        self._throughput = throughput
        self._pair = pair
        self._marks = marks
        number = api.phone_number_id or "unconfigured"
        self._rate_key = f"whatsapp:rate:{number}"
        self._pair_key = f"whatsapp:pair:{number}:"

    def send(self, message_id: str) -> Outcome:
        """Claim one message and send it now, through the steps a worker's send loop takes."""
        message = self.outbox.claim(message_id)
        if message is None:
            return Outcome.SKIPPED
        paced = self.pace([message])
        if not paced:
            return Outcome.RETRY
        self.sleep(paced[0][1])
        while True:  # a slot missed (a busy CPU), or an opt-out since the check, asks for a new one
            slot = self.send_slots(1)[0]
            if slot is None:  # none free within SLOT_HORIZON: the others' sends come first
                self.sleep(SLOT_HORIZON / 2)
                continue
            self.sleep(max(0.0, slot - time.monotonic()))
            cleared = self.check([message])[0]
            if not cleared.decision.allowed:
                return Outcome.PAUSED if cleared.decision.reason is Refusal.PAUSED else Outcome.BLOCKED
            if self.unchanged(message, cleared.mark) and time.monotonic() - slot <= LATE_SLOT:
                break
        outcome, accepted = self.call(message, cleared.address)
        if accepted is not None:
            self.record([(message, accepted, cleared.decision)])
        return outcome

    def pace(self, messages: Sequence[StoredMessage]) -> list[tuple[StoredMessage, float]]:
        """Reserve each message's slot under the pair rate, in one Redis call: the messages
        with the seconds each must wait. One that would wait longer than PAIR_MAX_WAIT goes
        back to the queue, due when its slot would have been."""
        reservations = self._pair.reserve_many([self._pair_key + (m.person_id or m.recipient) for m in messages], max_wait=PAIR_MAX_WAIT)
        paced = []
        for message, reservation in zip(messages, reservations, strict=True):
            if reservation.reserved:
                paced.append((message, reservation.wait))
            else:
                self._retry(message, timedelta(seconds=reservation.wait))
        return paced

    def send_slots(self, count: int) -> list[float | None]:
        """Reserve up to `count` of the phone number's next send slots, in one Redis call: when
        each is, in time.monotonic(), or None where no slot is free within SLOT_HORIZON. Redis
        counts the waits from some moment during the call: from its middle, a slot is off by at
        most half the call's time, early or late.

        No slot is handed out further ahead than SLOT_HORIZON, and the throughput limiter starts
        a key it does not have that far ahead (`fresh_start`): so when Redis restarts empty, the
        slots it gives out next come after every slot handed out before, not on top of them
        (which once brought a burst of 130429 answers)."""
        before = time.monotonic()
        reservations = self._throughput.reserve_many([self._rate_key] * count, max_wait=SLOT_HORIZON)
        middle = (before + time.monotonic()) / 2
        return [middle + reservation.wait if reservation.reserved else None for reservation in reservations]

    def check(self, messages: Sequence[StoredMessage]) -> list[Cleared]:
        """The policy's answer for each message now, from one read of the ledger, with the marks
        its recipient and campaign had just before (for `unchanged`). The refused are recorded
        `blocked`; those of a paused campaign go back to the queue, to wait for its resume."""
        marks = self._marks.read([(m.recipient, m.campaign_id) for m in messages])
        held = self.outbox.paused_campaigns({m.campaign_id for m in messages if m.campaign_id})
        held |= {m.campaign_id for m, (_, pause_mark) in zip(messages, marks, strict=True) if m.campaign_id and pause_mark is not None}
        kinds = self.outbox.kinds_now(messages)
        decisions = self.outbox.decide_many(list(zip((m.recipient for m in messages), kinds, strict=True)))
        cleared = []
        for message, kind, (decision, state), mark in zip(messages, kinds, decisions, marks, strict=True):
            if decision.allowed and isinstance(kind, MessageKind) and kind is not message.kind:
                self.outbox.decided_as(message.id, kind)
            if message.campaign_id in held:
                self.outbox.release(message.id, self.outbox.clock())
                decision = Decision(False, Refusal.PAUSED)
            elif not decision.allowed:
                assert decision.reason is not None, "a refusal has its reason"
                self.outbox.mark_blocked(message.id, decision.reason)
                log.info("message %s to %s blocked at send time: %s", message.id, mask(message.recipient), decision.reason.value)
            cleared.append(Cleared(decision, state.address, mark))
        return cleared

    def unchanged(self, message: StoredMessage, mark: Mark) -> bool:
        """The last look, right before the call: the user has not opted out and the campaign
        has not been paused since `check` read `mark`. False too when Redis does not answer:
        no call goes without this look."""
        try:
            return self._marks.read_one(message.recipient, message.campaign_id) == mark
        except redis.RedisError:
            return False

    def call(self, message: StoredMessage, address: str) -> tuple[Outcome, Accepted | None]:
        """The Cloud API call to `address`: SENT with Meta's answer, for `record`; or a failure,
        already recorded (failed, or back in the queue for a retry)."""
        try:
            if "template" in message.content:
                template = message.content["template"]
                accepted = self.api.send_template(address, template["name"], template["language"], template["components"])
            else:
                accepted = self.api.send_text(address, message.content["text"])
        except CloudApiError as error:
            return self._failed(message, error), None
        return Outcome.SENT, accepted

    def record(self, sends: Sequence[Sent]) -> None:
        """Record calls Meta accepted, in one transaction."""
        rows = [(message.id, accepted.message_id, decision.consent_event_id, accepted.sent_to) for message, accepted, decision in sends]
        self._keep_trying(f"{len(rows)} sent message(s)", lambda: self.outbox.mark_sent_many(rows))

    def _keep_trying(self, what: str, record: Callable[[], object]) -> None:
        """Record what Cloud API calls did, waiting out a database outage: given up, the
        messages would stay queued and be sent again once their lease ran out."""
        pause, deadline = 0.5, time.monotonic() + RECORD_PATIENCE
        while True:
            try:
                record()
                return
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as failure:
                if time.monotonic() > deadline:
                    raise
                log.warning("cannot record the outcome of %s yet (%s); trying again", what, type(failure).__name__)
                self.sleep(pause)
                pause = min(pause * 2, 10.0)

    def _failed(self, message: StoredMessage, error: CloudApiError) -> Outcome:
        if error.retry_after is not None and message.attempts < MAX_ATTEMPTS:
            backoff = min(error.retry_after * 2 ** (message.attempts - 1), max(MAX_BACKOFF, error.retry_after))
            return self._retry(message, backoff, error)
        reason = _FAILURE_REASONS.get(type(error), "send_error")
        what = f"message {message.id}"
        if isinstance(error, MarketingOptedOut):  # the ledger first: a marketing opt-out must not be lost
            evidence = {"message_id": message.id, "error_code": error.code, "details": error.details}
            draft = delivery_marketing_opt_out(message.recipient, f"send-error-131050:{message.id}", "sender", evidence)
            self._keep_trying(what, lambda: self.outbox.ledger.append(draft))
        self._keep_trying(what, lambda: self.outbox.mark_failed(message.id, reason, error.code, error.details or str(error)))
        log.warning("message %s to %s failed: %s (code %s)", message.id, mask(message.recipient), type(error).__name__, error.code)
        return Outcome.FAILED

    def _retry(self, message: StoredMessage, delay: timedelta, error: CloudApiError | None = None) -> Outcome:
        """Back to the queue, due after `delay`; the sweeper queues it again then."""
        due = utc_now() + delay
        self.outbox.release(message.id, due, error.code if error else None, str(error) if error else None)
        return Outcome.RETRY
