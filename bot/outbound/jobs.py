"""RQ jobs, and the per-process runtime they use (the services, their pools and the send loop).

A worker process builds its services once; each `send_messages` job claims its messages in groups
(one statement per group) and hands them to the process's send loop (bot.outbound.send_loop), returning
once they are all taken, so the loop never runs dry between jobs and a process keeps many
Cloud API calls in flight while the shared limiter paces them.
A worker killed mid-job loses nothing: the sweeper (bot.outbound.worker) queues again the messages it
had claimed once their lease expires, and those it had not yet claimed.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from bot.outbound.queues import make_queues
from bot.outbound.send_loop import SendLoop
from bot.outbound.sender import Sender
from bot.settings import load_settings

if TYPE_CHECKING:
    from bot.services import Services


class SendRuntime:
    """What one worker process needs to send: built once, shared by all its jobs and threads."""

    def __init__(self, services: Services):
        self.services = services
        concurrency = services.settings.send_concurrency
        self.sender = Sender(
            services.outbox, services.cloud_api, services.throughput_limiter, services.pair_limiter, services.opt_out_marks
        )
        # Messages are claimed in groups, one statement each; while the dispatcher waits for the
        # loop to free the next group, the loop sends from the group claimed before it. So a
        # process holds at most 1.5 x concurrency leases: each must last its wait in the loop.
        self._claim_size = max(1, concurrency // 2)
        self._slots = threading.BoundedSemaphore(concurrency + self._claim_size)  # claimed and not finished
        self.loop = SendLoop(self.sender, concurrency, done=self._slots.release)
        self.queues = make_queues(services.redis)

    def dispatch(self, message_ids: list[str]) -> None:
        """Claim the messages and hand them to the send loop; blocks while it is full.
        Messages another worker has, or that are done, are skipped."""
        for start in range(0, len(message_ids), self._claim_size):
            group = message_ids[start : start + self._claim_size]
            for _ in group:
                self._slots.acquire()
            claimed = []
            try:
                claimed = self.sender.outbox.claim_many(group)
            finally:
                for _ in range(len(group) - len(claimed)):
                    self._slots.release()
            if claimed:
                self.loop.add(claimed)

    def shutdown(self) -> None:
        """Send and record what was claimed, then end the send loop's threads."""
        self.loop.stop()


_runtime: SendRuntime | None = None
_runtime_lock = threading.Lock()


def runtime() -> SendRuntime:
    """This process's runtime, built on first use (`python -m bot.outbound.worker` builds it up front)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            from bot.services import build_services

            _runtime = SendRuntime(build_services(load_settings()))
        return _runtime


def use_runtime(send_runtime: SendRuntime) -> None:
    global _runtime
    _runtime = send_runtime


def send_messages(message_ids: list[str]) -> int:
    """RQ job: send these outbox messages. Returns how many were handed to the send loop."""
    runtime().dispatch(message_ids)
    return len(message_ids)
