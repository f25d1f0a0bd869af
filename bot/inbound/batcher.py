"""Group the calls that many threads make at the same moment into one batch call.

Under load many webhook POSTs wait at once, and one transaction for all of them costs little
more than for one. A caller hands over one item and waits; the first waiting caller to get
through the door runs one batch call for every item waiting at that moment, and each caller
gets its own answer. Nothing waits for a batch to fill: a lone caller is served at once, and
the batch grows only while the previous one is running.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Combiner(Generic[Item, Result]):
    """`call(item)` answers what `run([..., item, ...])` answered for it: `run` returns the
    results in order; a result that is an exception is raised to its caller alone, and an
    exception from `run` goes to every caller of the batch. No thread of its own: web processes
    fork, and apps come and go in tests."""

    def __init__(self, run: Callable[[list[Item]], Sequence[Result | Exception]], max_batch: int = 64):
        self._run = run
        self._max_batch = max_batch
        self._waiting: queue.SimpleQueue[tuple[Item, Future]] = queue.SimpleQueue()
        self._door = threading.Lock()

    def call(self, item: Item) -> Result:
        answer: Future = Future()
        self._waiting.put((item, answer))
        while not answer.done():
            with self._door:
                if not answer.done():
                    _run_batch(self._run, self._take_waiting())
        return answer.result()

    def _take_waiting(self) -> list[tuple[Item, Future]]:
        """What is waiting at this moment, up to `max_batch`."""
        batch: list[tuple[Item, Future]] = []
        while len(batch) < self._max_batch:
            try:
                batch.append(self._waiting.get_nowait())
            except queue.Empty:
                break
        return batch


def _run_batch(run: Callable[[list], Sequence], batch: Sequence[tuple[object, Future]]) -> None:
    """Run one batch and answer every caller in it, whatever happens: none may wait forever."""
    try:
        results = run([item for item, _ in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"{len(results)} results for {len(batch)} items")
    except BaseException as error:
        for _, answer in batch:
            answer.set_exception(error)
        if not isinstance(error, Exception):  # the process is stopping
            raise
        return
    for (_, answer), result in zip(batch, results):
        if isinstance(result, Exception):
            answer.set_exception(result)
        else:
            answer.set_result(result)
