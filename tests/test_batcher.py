"""The Batcher: concurrent calls become one batch call, each caller gets its own answer or the failure."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from bot.batcher import Batcher


def test_concurrent_calls_share_batches_and_get_their_own_answers():
    batches: list[list[int]] = []
    release = threading.Event()

    def run(items: list[int]) -> list[int]:
        release.wait(timeout=5)  # the first batch runs while the others queue up
        batches.append(items)
        return [item * 10 for item in items]

    batcher = Batcher(run, "test-batcher")
    with ThreadPoolExecutor(20) as pool:
        answers = [pool.submit(batcher.call, n) for n in range(20)]
        release.set()
        assert [answer.result(timeout=5) for answer in answers] == [n * 10 for n in range(20)]
    assert sorted(item for batch in batches for item in batch) == list(range(20))
    assert len(batches) < 20


def test_a_failed_batch_fails_its_callers_and_the_next_batch_still_runs():
    outcomes = iter([RuntimeError("database down"), None])

    def run(items: list[str]) -> None:
        failure = next(outcomes)
        if failure:
            raise failure

    batcher = Batcher(run, "test-batcher")
    with pytest.raises(RuntimeError, match="database down"):
        batcher.call("a")
    assert batcher.call("b") is None
