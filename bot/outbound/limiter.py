"""Send pacing shared by every worker on every host, kept in Redis.

A generic cell-rate algorithm (GCRA) run as one Lua script: each caller *reserves* the next
free slot and is told how long to wait for it, so many threads and processes spread their
sends evenly instead of retrying in bursts. Two limits use it: the phone number's
messages/second and Meta's pair rate to a single user.
"""
from __future__ import annotations

from dataclasses import dataclass

import redis

# For each key in turn, reserve a slot unless the wait would exceed ARGV[3] (-1: always reserve);
# a key given n times takes n consecutive slots. ARGV: interval between sends (us), burst size,
# max wait (us), and where a key that is not there starts (us from now). Returns {reserved 0|1,
# wait in us} per key, flattened. Times come from the Redis server, one clock for all hosts. A key
# is kept a minute past its last slot, so that only a lost key (a Redis restart) starts afresh.
_RESERVE = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local fresh = now + tonumber(ARGV[4])
local answers = {}
for _, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or fresh)
  if tat < now then tat = now end
  local wait = tat - (burst - 1) * interval - now
  if wait < 0 then wait = 0 end
  if max_wait >= 0 and wait > max_wait then
    table.insert(answers, 0)
  else
    local new_tat = tat + interval
    redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 60000)
    table.insert(answers, 1)
  end
  table.insert(answers, wait)
end
return answers
"""


@dataclass(frozen=True)
class Reservation:
    reserved: bool
    wait: float  # seconds until the slot (or, when not reserved, until one would be free)


class RateLimiter:
    """`rate` sends per `per` seconds for each key, allowing `burst` at once.

    `fresh_start`: seconds after now where a key that is not there (first use, idle, or lost
    with a Redis restart) takes its first slot. Callers that never reserve further ahead than
    that (`max_wait`) then cannot get slots on top of ones handed out before Redis forgot them.
    """

    def __init__(self, connection: redis.Redis, rate: float, per: float = 1.0, burst: int = 1, fresh_start: float = 0.0):
        if rate <= 0 or per <= 0 or burst < 1 or fresh_start < 0:
            raise ValueError("rate and per must be positive, burst at least 1, fresh_start not negative")
        self._interval_us = per / rate * 1_000_000
        self._burst = burst
        self._fresh_start_us = fresh_start * 1_000_000
        self._script = connection.register_script(_RESERVE)

    def reserve(self, key: str, max_wait: float | None = None) -> Reservation:
        """Take the next slot under `key`, unless it is further away than `max_wait` seconds."""
        return self.reserve_many([key], max_wait)[0]

    def reserve_many(self, keys: list[str], max_wait: float | None = None) -> list[Reservation]:
        """`reserve` for each key, in order, in one round trip."""
        limit = -1 if max_wait is None else max_wait * 1_000_000
        flat = self._script(keys=keys, args=[self._interval_us, self._burst, limit, self._fresh_start_us])
        return [Reservation(bool(flat[n]), int(flat[n + 1]) / 1_000_000) for n in range(0, len(flat), 2)]
