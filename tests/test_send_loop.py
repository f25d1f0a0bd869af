"""The send loop's threads on their own, with a sender that only counts (no database, Redis or
Graph API): it stops once every message handed to it has been sent and recorded."""
from __future__ import annotations

import threading
import time

from bot.domain.policy import Decision, MessageKind
from bot.outbound.cloud_api import Accepted
from bot.outbound.send_loop import SendLoop
from bot.outbound.sender import Cleared, Outcome
from bot.storage.outbox import MessageState, QueueName, StoredMessage


def stored(n: int) -> StoredMessage:
    return StoredMessage(
        f"m{n}", f"1555000{n:04d}", None, None, MessageKind.UTILITY_TEMPLATE, {"text": "hi"}, QueueName.REPLIES,
        MessageState.QUEUED, 1, None, None, None, None, None,
    )


class CountingSender:
    """Every message may go at once; a call waits until `release` is set."""

    def __init__(self):
        self.release = threading.Event()
        self.calling = threading.Event()
        self.recorded: list[str] = []

    def pace(self, messages):
        return [(message, 0.0) for message in messages]

    def send_slots(self, count):
        return [time.monotonic()] * count

    def check(self, messages):
        return [Cleared(Decision(True), message.recipient, None) for message in messages]

    def unchanged(self, message, mark):
        return True

    def call(self, message, address):
        self.calling.set()
        self.release.wait(5)
        return Outcome.SENT, Accepted(f"wamid.{message.id}", address)

    def record(self, sends):
        self.recorded += [message.id for message, _, _ in sends]


def test_stop_while_a_call_is_in_flight_returns_once_it_ends():
    """Stop, asked while the last call was still out, used to wait for ever: the conductor waited
    for news with no timeout, and the end of that call told only the recorder."""
    sender = CountingSender()
    left: list[int] = []
    loop = SendLoop(sender, threads=2, done=left.append)
    loop.add([stored(1)])
    assert sender.calling.wait(5)
    time.sleep(0.05)  # the conductor is waiting again, for news
    stopper = threading.Thread(target=loop.stop)
    stopper.start()
    time.sleep(0.05)
    sender.release.set()
    stopper.join(5)
    assert not stopper.is_alive(), "stop() never returned"
    assert sender.recorded == ["m1"] and sum(left) == 1
