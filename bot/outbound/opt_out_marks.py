"""Marks in Redis that a user has just opted out: the send path's last look before a Cloud API call.

A worker asks the ledger about a wave of messages a few milliseconds before their calls, in one
query (bot.outbound.send_loop); a STOP committed in between is not in that answer. So each opt-out, once
committed and before it is acknowledged, sets a new random mark under its user's key. The send
loop reads a wave's marks just before its ledger query, and each call thread reads its user's
mark once more right before the call: a mark that changed sends the message back for a new
check against the ledger. A mark never refuses anything by itself; it only asks for that look.

Setting marks never fails an opt-out: when Redis does not answer, the opt-out is recorded all
the same and the failure logged. No worker can take its last look without Redis either, so no
call goes out until Redis answers again, and each message is then checked against the ledger
anew. (Only a web process cut off from a Redis that the workers still reach would leave the
few milliseconds uncovered.)
"""
from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Sequence

import redis

log = logging.getLogger(__name__)

KEY = "whatsapp:opted-out:"
TTL = 600  # seconds a mark is kept: far longer than any wave waits between its check and its calls

Mark = bytes | str | None  # str from a connection that decodes responses; None: no opt-out in the last TTL seconds


class OptOutMarks:
    def __init__(self, connection: redis.Redis):
        self._redis = connection

    def mark(self, identifiers: Iterable[str]) -> None:
        """These identifiers' people opted out in a transaction that has committed: one Redis round trip."""
        keys = {KEY + identifier for identifier in identifiers}
        if not keys:
            return
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(key, secrets.token_hex(8), ex=TTL)
                pipe.execute()
        except redis.RedisError as error:
            log.warning("could not mark %d opt-out(s) for the send threads: %s", len(keys), error)

    def read(self, identifiers: Sequence[str]) -> list[Mark]:
        """The current mark of each identifier, in one call; read before the ledger is asked."""
        return self._redis.mget([KEY + identifier for identifier in identifiers]) if identifiers else []

    def read_one(self, identifier: str) -> Mark:
        return self._redis.get(KEY + identifier)
