"""The Redis limiter against the real Redis: pacing, bursts, max wait, and sharing across processes."""
from __future__ import annotations

import multiprocessing
import time
import uuid

import pytest
import redis

from bot.outbound.limiter import RateLimiter
from tests.conftest import TEST_REDIS_URL as REDIS_URL

pytestmark = [pytest.mark.redis]


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


def test_slots_are_handed_out_at_most_a_horizon_ahead_and_a_forgotten_key_starts_past_it(connection):
    """What a restarted, empty Redis forgot can only be slots within the horizon; a key it does
    not have starts past it, so no second gets its slots twice."""
    limiter, slot = RateLimiter(connection, rate=100, fresh_start=0.1), key()
    first = limiter.reserve_many([slot] * 3, max_wait=0.1)
    assert [r.reserved for r in first] == [True, False, False]  # a new key starts at the horizon: 10 ms apart, only one fits
    assert first[0].wait == pytest.approx(0.1, abs=0.01)
    time.sleep(0.05)
    handed_out = limiter.reserve_many([slot] * 10, max_wait=0.1)
    assert sum(r.reserved for r in handed_out) == 5  # 0.05 s later, five more fit under the horizon
    last = time.monotonic() + max(r.wait for r in handed_out if r.reserved)
    connection.delete(slot)  # Redis restarted empty
    [after] = limiter.reserve_many([slot], max_wait=0.1)
    assert after.reserved and time.monotonic() + after.wait >= last  # not on top of the slots handed out before


def test_an_idle_key_is_kept_so_that_it_does_not_start_afresh(connection):
    limiter, slot = RateLimiter(connection, rate=100, fresh_start=0.1), key()
    limiter.reserve(slot)
    time.sleep(0.2)
    assert limiter.reserve(slot).wait == 0  # idle, not forgotten: no fresh-start wait
    assert connection.pttl(slot) > 55_000
