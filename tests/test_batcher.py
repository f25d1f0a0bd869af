"""The Combiner: concurrent calls become one batch call, each caller gets its own answer or the failure."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from bot.inbound.batcher import Combiner


def test_combined_calls_share_batches_and_a_failure_of_one_item_goes_to_its_caller_alone():
    batches: list[list[int]] = []
    first_batch_running, release = threading.Event(), threading.Event()

    def run(items: list[int]) -> list[int | Exception]:
        first_batch_running.set()
        release.wait(timeout=5)  # callers arriving meanwhile wait at the door together
        batches.append(items)
        return [ValueError(f"item {item}") if item == 7 else item * 10 for item in items]

    combiner = Combiner(run)
    with ThreadPoolExecutor(20) as pool:
        first = pool.submit(combiner.call, 0)
        first_batch_running.wait(timeout=5)
        others = [pool.submit(combiner.call, n) for n in range(1, 20)]
        release.set()
        assert first.result(timeout=5) == 0
        with pytest.raises(ValueError, match="item 7"):
            others[6].result(timeout=5)
        assert [answer.result(timeout=5) for i, answer in enumerate(others) if i != 6] == [n * 10 for n in range(1, 20) if n != 7]
    assert sorted(item for batch in batches for item in batch) == list(range(20))
    assert batches[0] == [0] and len(batches) < 20


def test_a_failed_combined_batch_fails_its_callers_and_the_next_call_still_runs():
    outcomes = iter([RuntimeError("database down"), None])

    def run(items: list[str]) -> list[str]:
        if failure := next(outcomes):
            raise failure
        return [item.upper() for item in items]

    combiner = Combiner(run)
    with pytest.raises(RuntimeError, match="database down"):
        combiner.call("a")
    assert combiner.call("b") == "B"
