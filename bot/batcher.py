"""Group the calls that many send threads make at the same moment into one round trip.

At 1,000 messages/second, one database statement or Redis call per message costs more CPU
than the sends themselves. A `Batcher` runs on a thread of its own: a caller hands it one
item and waits; the thread takes every item waiting at that moment, runs one batch call for
all of them and answers each caller. Nothing waits for a batch to fill: a lone caller is
served at once, and the batch grows only while the previous one is running.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable, Generic, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """`call(item)` answers what `run([..., item, ...])` answered for it: `run` returns the
    results in order, or None to answer None to every caller."""

    def __init__(self, run: Callable[[list[Item]], Sequence[Result] | None], name: str, max_batch: int = 500):
        self._run = run
        self._max_batch = max_batch
        self._waiting: queue.SimpleQueue[tuple[Item, Future]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def call(self, item: Item) -> Result:
        answer: Future = Future()
        self._waiting.put((item, answer))
        return answer.result()

    def _serve(self) -> None:
        while True:
            batch = [self._waiting.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self._run([item for item, _ in batch])
                if results is None:
                    results = [None] * len(batch)
            except Exception as error:  # every caller gets the failure, the thread lives on
                for _, answer in batch:
                    answer.set_exception(error)
                continue
            for (_, answer), result in zip(batch, results, strict=True):
                answer.set_result(result)
