"""The Redis limiter against the real Redis: pacing, bursts, max wait, and sharing across processes."""
from __future__ import annotations

import multiprocessing
import time
import uuid

import pytest
import redis

from bot.limiter import RateLimiter

from tests.conftest import TEST_REDIS_URL as REDIS_URL


@pytest.fixture
def connection():
    connection = redis.Redis.from_url(REDIS_URL)
    yield connection
    connection.close()


def key() -> str:
    return f"test-limit:{uuid.uuid4()}"


def test_reservations_are_spaced_by_the_interval(connection):
    limiter, slot = RateLimiter(connection, rate=100), key()
    waits = [limiter.reserve(slot).wait for _ in range(50)]
    assert waits[0] == 0
    # Each reservation is 10 ms after the one before, less the time the loop itself took.
    assert waits[-1] == pytest.approx(0.49, abs=0.05)
    assert all(later >= earlier for earlier, later in zip(waits, waits[1:]))


def test_burst_goes_at_once_then_paces(connection):
    limiter, slot = RateLimiter(connection, rate=1, per=6, burst=3), key()
    waits = [limiter.reserve(slot).wait for _ in range(4)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3] == pytest.approx(6, abs=0.1)


def test_a_slot_too_far_away_is_not_taken(connection):
    limiter, slot = RateLimiter(connection, rate=1, per=6), key()
    assert limiter.reserve(slot).reserved
    refused = limiter.reserve(slot, max_wait=1)
    assert not refused.reserved and refused.wait == pytest.approx(6, abs=0.1)
    # The refusal took nothing: the next caller still gets the slot 6 s away, not 12.
    assert limiter.reserve(slot).wait == pytest.approx(6, abs=0.1)


def test_many_reservations_in_one_call_are_taken_in_order(connection):
    limiter, one, other = RateLimiter(connection, rate=1, per=6, burst=2), key(), key()
    answers = limiter.reserve_many([one, other, one, one], max_wait=1)
    assert [a.reserved for a in answers] == [True, True, True, False]
    assert [a.wait for a in answers[:3]] == [0, 0, 0]
    assert answers[3].wait == pytest.approx(6, abs=0.1)
    # A key given n times takes n consecutive slots.
    paced = RateLimiter(connection, rate=100).reserve_many([key()] * 5)
    assert [a.wait for a in paced] == pytest.approx([0, 0.01, 0.02, 0.03, 0.04], abs=0.002)


def _take(limit_key: str, count: int, ready, go, queue) -> None:
    limiter = RateLimiter(redis.Redis.from_url(REDIS_URL), rate=200)
    limiter.reserve(f"{limit_key}:warm-up")  # load the script before the race starts
    ready.release()
    go.wait(timeout=30)
    for _ in range(count):
        asked = time.time()
        queue.put(asked + limiter.reserve(limit_key).wait)


def test_processes_share_one_pace(connection):
    limit_key, context = key(), multiprocessing.get_context("spawn")
    queue, ready, go = context.Queue(), context.Semaphore(0), context.Event()
    workers = [context.Process(target=_take, args=(limit_key, 100, ready, go, queue)) for _ in range(2)]
    for process in workers:
        process.start()
    for _ in workers:
        assert ready.acquire(timeout=60)
    go.set()
    slots = sorted(queue.get(timeout=30) for _ in range(200))
    for process in workers:
        process.join(timeout=30)
    # 200 slots at 200/s, taken by two processes at once, span one second: each process alone
    # would have spread its 100 over half a second.
    assert slots[-1] - slots[0] == pytest.approx(0.995, abs=0.05)
