"""Deliver forwarded events (SPEC §9) from the workers: to FORWARD_URL, and to the business's handlers.

Each worker process runs one loop per destination. The loop leases the oldest pending event of
people nobody else is serving (bot.storage.forwarding.ForwardQueue.claim) and hands each to a
thread; a person's next event is leased only once the last is done, so each person's events
arrive in order, while many people's are delivered at once. The loop looks for work when the
webhook wakes it (a Redis list) and at least every POLL_SECONDS, so a lost wake-up, a Redis
flush or a restart only delays delivery: what is pending lives in the database.
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from queue import SimpleQueue
from urllib.parse import urlsplit

import redis
from requests.certs import where as ca_bundle  # type: ignore[attr-defined]  # certifi's, as the Cloud API's client uses

from bot.domain.policy import MessageKind
from bot.plugins import Answer, Consent, Handlers, IncomingMessage, Person
from bot.storage.forwarding import Destination, ForwardQueue, Pending
from bot.storage.ledger import Ledger
from bot.storage.outbox import Message, Outbox, QueueName

log = logging.getLogger(__name__)

WAKE_KEY = "whatsapp:forward:wake"  # the webhook pushes here once it committed events to forward
POLL_SECONDS = 1.0
ROUND_SECONDS = 0.05  # at most one round of claiming and recording per this long, per loop
TIMEOUT_SECONDS = 10.0  # for the receiver's answer: then the event is tried again later
CONCURRENCY = 32  # events in delivery at once, per destination and worker process
ANSWER_READ = 64 * 1024  # of a receiver's answer


class HandlerFailed(Exception):
    """A business handler raised: not tried again (its code would most likely raise again)."""


Deliver = Callable[[Pending], None]  # raises on failure: HandlerFailed to stop trying, anything else to retry


def wake_forwarders(connection: redis.Redis) -> Callable[[], None]:
    """What the webhook calls after committing events: one short Redis round trip."""

    def wake() -> None:
        with connection.pipeline(transaction=False) as pipe:
            pipe.lpush(WAKE_KEY, "1")
            pipe.ltrim(WAKE_KEY, 0, 0)
            pipe.execute()

    return wake


def signature(secret: str, body: bytes) -> str:
    """X-Signature-256: `sha256=` + hex HMAC-SHA256 of the exact body, keyed with FORWARD_SECRET."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_to(url: str, secret: str) -> Deliver:
    """Deliver by POSTing the event's body, signed; any answer but 2xx, or none in time, fails it."""
    receiver = _Receiver(url)

    def deliver(event: Pending) -> None:
        body = event.delivered_body().encode()
        status = receiver.post(body, {"Content-Type": "application/json", "X-Signature-256": signature(secret, body)})
        if not 200 <= status < 300:
            raise RuntimeError(f"the receiver answered {status}")

    return deliver


class _Receiver:
    """FORWARD_URL's host, over one kept-alive HTTP/1.1 connection per delivering thread
    (http.client: the CPU of a pooled client library per event is what a busy worker spends most on)."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self._tls = ssl.create_default_context(cafile=ca_bundle()) if parts.scheme == "https" else None
        self._host, self._port = parts.hostname or "", parts.port or (443 if self._tls else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._local = threading.local()

    def post(self, body: bytes, headers: dict[str, str]) -> int:
        """The answer's status. Only a short answer is read, so that the connection serves the
        next event; a long one closes it. A kept connection the receiver closed while idle is
        replaced once (the event's id makes a repeat harmless)."""
        headers = {**headers, "User-Agent": "consent-bot-forwarder", "Content-Length": str(len(body))}
        for fresh in (False, True):
            connection = self._connection(fresh)
            try:
                connection.request("POST", self._target, body, headers)
                answer = connection.getresponse()
                read = answer.read(ANSWER_READ)
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                self._local.connection = None
                if fresh or isinstance(error, TimeoutError):
                    raise
                continue
            if answer.will_close or len(read) == ANSWER_READ:
                connection.close()
                self._local.connection = None
            return answer.status
        raise AssertionError("unreachable: the fresh connection's attempt returns or raises")

    def _connection(self, fresh: bool) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None or fresh:
            if self._tls:
                connection = http.client.HTTPSConnection(self._host, self._port, timeout=TIMEOUT_SECONDS, context=self._tls)
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=TIMEOUT_SECONDS)
            self._local.connection = connection
        return connection


def run_handlers(handlers: Handlers, ledger: Ledger, outbox: Outbox) -> Deliver:
    """Deliver an inbound message to the first of the business's handlers that matches, unless
    a staff member handles the conversation now. Its replies go through the outbox, once each
    however often the event is delivered."""

    def deliver(event: Pending) -> None:
        body = json.loads(event.body)
        message = _incoming(body)
        handler = handlers.handler_for(message)
        if handler is None:
            return
        if event.handled_by is not None:
            log.info("no handler answers message %s: %s handles the conversation", message.id, event.handled_by)
            return
        sender = message.person.wa_id or message.person.user_id
        assert sender is not None, "a forwarded message names its sender"
        state = ledger.state(sender)
        until = state.window_open_until(ledger.clock())
        consent = Consent(state.state.value, state.marketing.value, until)
        replies = 0

        def reply(text: str) -> Answer:
            nonlocal replies
            replies += 1
            submission = outbox.submit(
                Message(sender, MessageKind.FREE_FORM, text=text), f"handler:{event.id}:{replies}",
                f"handler:{handler.__name__}"[:260], QueueName.REPLIES,
            )
            return Answer(submission.queued, submission.reason.value if submission.reason else None)

        try:
            handler(message, consent, reply)
        except Exception as error:
            log.exception("handler %s failed on message %s", handler.__name__, message.id)
            raise HandlerFailed(f"handler {handler.__name__} raised {type(error).__name__}: {error}") from None

    return deliver


def _incoming(body: dict) -> IncomingMessage:
    message = dict(body["message"])
    person = Person(body["person"].get("wa_id"), body["person"].get("user_id"))
    text = message.pop("text") or (message.get("button") or {}).get("title")
    return IncomingMessage(
        message.pop("id"), message.pop("type"), person, datetime.fromisoformat(body["occurred_at"]), text, message,
    )


class Forwarder:
    """One destination's delivery loop in this process.

    The loop's own thread claims events and records what became of them, many in one statement:
    the threads of its pool only deliver, so the database is asked a few times per round of
    deliveries, not a few times per event."""

    def __init__(self, queue: ForwardQueue, destination: Destination, deliver: Deliver, concurrency: int = CONCURRENCY):
        self.queue, self.destination, self.deliver, self.concurrency = queue, destination, deliver, concurrency
        self._busy: set[str] = set()  # people whose event is in delivery here, until its outcome is recorded
        self._outcomes: SimpleQueue[tuple[Pending, Exception | None]] = SimpleQueue()
        self._work = threading.Event()  # something may be ready: a wake-up, or a delivery that finished
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix=f"forward-{destination.value}")

    def wake(self) -> None:
        self._work.set()

    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop`; then let deliveries in flight finish and record them."""
        try:
            while not stop.is_set():
                started = time.monotonic()
                self._work.clear()
                recorded = self._record()
                if not self._claim() and not recorded:
                    self._work.wait(POLL_SECONDS)
                # What finishes or comes in meanwhile waits for the next round: under load, a
                # round's few statements serve many events, not one each.
                time.sleep(max(0.0, started + ROUND_SECONDS - time.monotonic()))
        finally:
            self._pool.shutdown(wait=True)
            self._record()

    def _claim(self) -> int:
        free = self.concurrency - len(self._busy)
        if free <= 0:
            return 0
        try:
            events = self.queue.claim(self.destination, free, self._busy)
        except Exception:  # the database is away: look again later
            log.exception("could not claim events to forward")
            return 0
        for event in events:
            self._busy.add(event.person_id)
            self._pool.submit(self._deliver, event)
        return len(events)

    def _deliver(self, event: Pending) -> None:
        try:
            self.deliver(event)
            self._outcomes.put((event, None))
        except Exception as error:
            self._outcomes.put((event, error))
        finally:
            self._work.set()

    def _record(self) -> int:
        """Record the outcomes of the deliveries that finished; how many. One that cannot be
        recorded (the database is away) is delivered again once its lease runs out."""
        finished = []
        while not self._outcomes.empty():
            finished.append(self._outcomes.get())
        delivered = [event for event, error in finished if error is None]
        try:
            if delivered:
                self.queue.delivered(delivered)
            for event, error in finished:
                if isinstance(error, HandlerFailed):
                    self.queue.failed(event, str(error))
                elif error is not None:
                    reason = _reason(error)
                    log.warning("event %s not delivered to %s (try %d): %s", event.id, self.destination.value, event.attempts, reason)
                    self.queue.not_delivered(event, reason)
        except Exception:
            log.exception("could not record what became of %d forwarded event(s)", len(finished))
        self._busy.difference_update(event.person_id for event, _ in finished)
        return len(finished)


def _reason(error: Exception) -> str:
    """Why a delivery failed, in one line without the URL (it may carry a token)."""
    if isinstance(error, TimeoutError):
        return f"no answer within {TIMEOUT_SECONDS:.0f} s"
    if isinstance(error, (OSError, http.client.HTTPException)):
        return f"the receiver could not be reached ({type(error).__name__})"
    return str(error) if isinstance(error, RuntimeError) else f"{type(error).__name__}: {error}"


def listen_for_wakes(connection: redis.Redis, forwarders: list[Forwarder], stop: threading.Event) -> None:
    """Wake the loops when the webhook says there is work (the loops also look every POLL_SECONDS)."""
    while not stop.is_set():
        try:
            if connection.blpop([WAKE_KEY], timeout=1):
                for forwarder in forwarders:
                    forwarder.wake()
                stop.wait(ROUND_SECONDS)  # the wake-ups meanwhile are one (the list keeps one), for the next round
        except redis.RedisError:
            stop.wait(POLL_SECONDS)
