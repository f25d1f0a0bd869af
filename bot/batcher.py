"""Group the calls that many threads make at the same moment into one round trip.

At 1,000 messages or webhook events a second, one database statement or Redis call per item
costs more CPU than the work itself. A caller hands over one item and waits; every item
waiting at that moment goes into one batch call, and each caller gets its own answer.
Nothing waits for a batch to fill: a lone caller is served at once, and the batch grows only
while the previous one is running. A `Batcher` (the send workers) runs batches on a thread of
its own; a `Combiner` (the web processes) has the first waiting caller run them.
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
    results in order (a result that is an exception is raised to its caller alone), or None
    to answer None to every caller. An exception from `run` goes to every caller of the batch."""

    def __init__(self, run: Callable[[list[Item]], Sequence[Result | Exception] | None], name: str, max_batch: int = 500):
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
            _run_batch(self._run, _take([self._waiting.get()], self._waiting, self._max_batch))


class Combiner(Generic[Item, Result]):
    """A Batcher without a thread of its own, for web processes (where apps come and go and
    processes fork): the first waiting caller to get through the door runs one batch for
    every caller waiting at that moment; the others wait at the door for their answers."""

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
                    _run_batch(self._run, _take([], self._waiting, self._max_batch))
        return answer.result()


def _take(batch: list, waiting: queue.SimpleQueue, max_batch: int) -> list:
    """Add to `batch` what is waiting at this moment, up to `max_batch` in all."""
    while len(batch) < max_batch:
        try:
            batch.append(waiting.get_nowait())
        except queue.Empty:
            break
    return batch


def _run_batch(run: Callable[[list], Sequence | None], batch: list[tuple[object, Future]]) -> None:
    """Run one batch and answer every caller in it, whatever happens: none may wait forever."""
    try:
        results = run([item for item, _ in batch])
        if results is None:
            results = [None] * len(batch)
        elif len(results) != len(batch):
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
