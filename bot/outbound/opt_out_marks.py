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

A paused campaign (by staff, or by Meta's alarms) is marked the same way, under its own key, as
soon as the pause is recorded, and the mark stays while the campaign is paused (or TTL seconds,
as after that the database's pause stops claims and checks): a message whose campaign mark is
there is put back in the queue, to wait for the resume, instead of being sent.
"""
from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable, Sequence

import redis

log = logging.getLogger(__name__)

KEY = "whatsapp:opted-out:"
PAUSED = "whatsapp:paused:"
TTL = 600  # seconds a mark is kept: far longer than any wave waits between its check and its calls
CALLS_UNDER_WAY = 0.05  # seconds from a call thread's last look to its request on the wire, with room to spare

Value = bytes | str | None  # str from a connection that decodes responses; None: no mark
Mark = tuple[Value, Value]  # the recipient's opt-out mark, their campaign's pause mark


class OptOutMarks:
    def __init__(self, connection: redis.Redis):
        self._redis = connection

    def mark(self, identifiers: Iterable[str]) -> None:
        """These identifiers' people opted out in a transaction that has committed: one Redis round trip."""
        self._set({KEY + identifier for identifier in identifiers}, "opt-out")

    def _set(self, keys: set[str], what: str) -> None:
        if not keys:
            return
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(key, secrets.token_hex(8), ex=TTL)
                pipe.execute()
        except redis.RedisError as error:
            log.warning("could not mark %d %s(s) for the send threads: %s", len(keys), what, error)

    def mark_paused(self, campaign_ids: Iterable[str]) -> None:
        """These campaigns were paused: their messages already claimed go back to the queue.
        Returns once a call that took its last look before the mark has had time to go out, so
        that after the pause is answered no message of the campaign leaves."""
        keys = {PAUSED + campaign_id for campaign_id in campaign_ids}
        self._set(keys, "pause")
        if keys:
            time.sleep(CALLS_UNDER_WAY)

    def resumed(self, campaign_id: str) -> None:
        """The campaign runs again: its mark must not hold its messages back."""
        self._redis.delete(PAUSED + campaign_id)

    def read(self, sends: Sequence[tuple[str, str | None]]) -> list[Mark]:
        """The marks of each (recipient, campaign id or None), in one call; read before the ledger is asked."""
        if not sends:
            return []
        values = iter(self._redis.mget([key for send in sends for key in _keys(*send)]))
        return [(next(values), next(values) if campaign_id else None) for _, campaign_id in sends]

    def read_one(self, recipient: str, campaign_id: str | None) -> Mark:
        return self.read([(recipient, campaign_id)])[0]


def _keys(recipient: str, campaign_id: str | None) -> list[str]:
    return [KEY + recipient, PAUSED + campaign_id] if campaign_id else [KEY + recipient]
