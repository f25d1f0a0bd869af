"""A worker process's send loop: one thread does the bookkeeping of every message in flight, a
wave at a time, and a pool of call threads makes the Cloud API calls.

At 1,000 messages/second the CPU goes less to the calls than to what surrounds them: a Redis
call, a database statement or a hand-off between threads per message, and the switching
between a hundred threads that wake for each. So the conductor thread takes the steps of
bot.outbound.sender for whole waves: the pair-rate slots of newly claimed messages in one Redis call,
send slots for as many messages as there are free call threads in one more, and the consent
check of every message whose slot is near in one query. A recorder thread records the calls
that ended in one transaction every RECORD_EVERY, apart from the conductor so that a commit
never makes a wave late. A call thread wakes only to take a message, at its slot, and with
Meta's answer.

Consent is asked at most DECIDE_WINDOW before the call. Right before it, the call thread reads
its user's opt-out mark (bot.outbound.opt_out_marks): if the user opted out since the check, or the
thread woke more than LATE_SLOT after its slot (a busy CPU), it hands the message back for a new
slot and a new check.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from bot.outbound.sender import LATE_SLOT, Cleared, Outcome, Sender, Sent
from bot.storage.outbox import StoredMessage

log = logging.getLogger(__name__)

DECIDE_WINDOW = 0.01  # seconds: a wave's consent check covers the slots this close (a later STOP is seen by its mark)
DECIDE_LEAD = 0.005  # seconds before its first slot that a wave is checked: the query's time, and a busy CPU's
RECORD_EVERY = 0.02  # seconds a finished call may wait for its record: the calls ending meanwhile share it
POLL = 0.01  # seconds between looks at the call threads while messages wait for one of them

Timed = tuple[float, int, StoredMessage]  # (monotonic time, tie-breaker, message): heap entries


class SendLoop:
    """Sends claimed messages (`add`) with `threads` calls in flight at most; `done(n)` is
    told each time n messages leave the loop, sent, refused, failed or given up to their lease."""

    def __init__(self, sender: Sender, threads: int, done: Callable[[int], None]):
        self._sender = sender
        self._threads = threads
        self._done = done
        self._order = itertools.count()
        lock = threading.Lock()
        self._news = threading.Condition(lock)  # for the conductor
        self._results = threading.Condition(lock)  # for the recorder
        # Shared, under the lock:
        self._arrived: list[StoredMessage] = []  # claimed, not yet paced
        self._returned: list[StoredMessage] = []  # woke too late for their slot, or their user opted out: need a new one
        self._finished: list[Sent] = []  # accepted by Meta, to record
        self._settled = 0  # calls that ended with their outcome recorded (failures, retries)
        self._busy = 0  # messages handed to call threads and not back
        self._stopping = False  # no more messages will be added
        self._calls_ended = False  # and the conductor and call threads are done with all of them
        # The conductor's own:
        self._pair_waits: list[Timed] = []  # heap, by when the pair rate lets them go
        self._ready: list[StoredMessage] = []  # may go: waiting for a free call thread
        self._scheduled: list[Timed] = []  # heap, by send slot
        self._calls: queue.SimpleQueue[tuple[StoredMessage, Cleared, float] | None] = queue.SimpleQueue()
        self._conductor: threading.Thread | None = None  # the threads start with the first message
        self._callers: list[threading.Thread] = []
        self._recorder: threading.Thread | None = None

    def add(self, messages: Sequence[StoredMessage]) -> None:
        with self._news:
            if self._conductor is None:
                self._start()
            self._arrived.extend(messages)
            self._news.notify()

    def stop(self) -> None:
        """Send what was added, record it, and end the threads."""
        with self._news:
            self._stopping = True
            self._news.notify()
        if self._conductor is None:
            return
        self._conductor.join()
        for thread in self._callers:
            thread.join()
        with self._results:
            self._calls_ended = True
            self._results.notify()
        assert self._recorder is not None, "started with the conductor"
        self._recorder.join()

    def _start(self) -> None:
        self._conductor = threading.Thread(target=self._conduct, name="send-conductor", daemon=True)
        self._callers = [threading.Thread(target=self._call_forever, name=f"send-{n}", daemon=True) for n in range(self._threads)]
        self._recorder = threading.Thread(target=self._record_forever, name="send-recorder", daemon=True)
        for thread in (self._conductor, self._recorder, *self._callers):
            thread.start()

    def _step(self, name: str, messages: Sequence[object], run: Callable[[], None]) -> None:
        """Run one step for a wave; if it fails (Redis or the database down), the wave leaves
        the loop: the leases of its messages run out and the sweeper queues them again."""
        if not messages:
            return
        try:
            run()
        except Exception:
            log.exception("%s of %d message(s) failed; they will be retried", name, len(messages))
            self._leave(len(messages))

    def _leave(self, count: int) -> None:
        if count:
            self._done(count)

    # -- the conductor -------------------------------------------------------------------

    def _conduct(self) -> None:
        while True:
            with self._news:
                self._news.wait_for(lambda: self._arrived or self._returned or self._drained(), self._next_wake())
                if self._drained():
                    break
                arrived, self._arrived = self._arrived, []
                returned, self._returned = self._returned, []
            self._step("pace", arrived, lambda: self._pace(arrived))
            self._ready.extend(returned)
            self._schedule()
            self._hand_out()
        for _ in self._callers:
            self._calls.put(None)

    def _drained(self) -> bool:
        """Told to stop, and every message has been handed out and its call has ended."""
        waiting = self._pair_waits or self._ready or self._scheduled
        return self._stopping and not (self._arrived or self._returned or self._busy or waiting)

    def _next_wake(self) -> float | None:
        """Seconds until the conductor has something to do without being told."""
        now, soon = time.monotonic(), []
        if self._scheduled:
            soon.append(self._scheduled[0][0] - DECIDE_LEAD - now)
        if self._pair_waits:
            soon.append(self._pair_waits[0][0] - now)
        if self._ready or (self._stopping and self._busy):
            soon.append(POLL)
        return max(0.0, min(soon)) if soon else None

    def _pace(self, arrived: list[StoredMessage]) -> None:
        paced = self._sender.pace(arrived)
        self._leave(len(arrived) - len(paced))  # the rest went back to the queue
        now = time.monotonic()
        for message, wait in paced:
            if wait > 0:
                heapq.heappush(self._pair_waits, (now + wait, next(self._order), message))
            else:
                self._ready.append(message)

    def _schedule(self) -> None:
        """Take send slots for the ready messages that free call threads can take."""
        now = time.monotonic()
        while self._pair_waits and self._pair_waits[0][0] <= now:
            self._ready.append(heapq.heappop(self._pair_waits)[2])
        count = min(len(self._ready), self._threads - self._busy - len(self._scheduled))
        if count <= 0:
            return
        wave, self._ready = self._ready[:count], self._ready[count:]

        def take_slots() -> None:
            slots = self._sender.send_slots(len(wave))
            waiting = []  # no slot free soon enough: they ask again at the next wake
            for message, slot in zip(wave, slots, strict=True):
                if slot is None:
                    waiting.append(message)
                else:
                    heapq.heappush(self._scheduled, (slot, next(self._order), message))
            self._ready[:0] = waiting

        self._step("pacing", wave, take_slots)

    def _hand_out(self) -> None:
        """Check consent for the messages whose slot is near and hand them to call threads."""
        horizon = time.monotonic() + DECIDE_WINDOW
        due: list[Timed] = []
        while self._scheduled and self._scheduled[0][0] <= horizon:
            due.append(heapq.heappop(self._scheduled))

        def check() -> None:
            checked = self._sender.check([message for _, _, message in due])
            allowed = [
                (message, cleared, slot) for (slot, _, message), cleared in zip(due, checked, strict=True) if cleared.decision.allowed
            ]
            with self._news:
                self._busy += len(allowed)
            self._leave(len(due) - len(allowed))
            for call in allowed:
                self._calls.put(call)

        self._step("consent check", due, check)

    # -- the call threads ----------------------------------------------------------------

    def _call_forever(self) -> None:
        while (call := self._calls.get()) is not None:
            message, cleared, slot = call
            time.sleep(max(0.0, slot - time.monotonic()))
            if not self._sender.unchanged(message, cleared.mark) or time.monotonic() - slot > LATE_SLOT:
                with self._news:
                    self._busy -= 1
                    self._returned.append(message)
                    self._news.notify()
                continue
            try:
                outcome, accepted = self._sender.call(message, cleared.address)
            except Exception:  # the lease brings the message back; keep the thread alive
                log.exception("send of message %s failed unexpectedly; it will be retried", message.id)
                outcome, accepted = None, None
            with self._results:
                self._busy -= 1
                if outcome is Outcome.SENT:
                    assert accepted is not None, "a call that SENT has Meta's answer"
                    self._finished.append((message, accepted, cleared.decision))
                else:
                    self._settled += 1
                if len(self._finished) + self._settled == 1:
                    self._results.notify()
                if self._stopping and not self._busy:  # the conductor may be waiting, untimed, for the last call to end
                    self._news.notify()

    # -- the recorder --------------------------------------------------------------------

    def _record_forever(self) -> None:
        while True:
            with self._results:
                self._results.wait_for(lambda: self._finished or self._settled or self._calls_ended)
                if self._calls_ended and not (self._finished or self._settled):
                    return
            if not self._calls_ended:
                time.sleep(RECORD_EVERY)  # one transaction for the calls that end meanwhile too
            with self._results:
                finished, self._finished = self._finished, []
                settled, self._settled = self._settled, 0
            self._step("record", finished, lambda: self._record(finished))
            self._leave(settled)

    def _record(self, finished: list[Sent]) -> None:
        self._sender.record(finished)
        self._leave(len(finished))
