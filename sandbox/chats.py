"""What the sandbox's WhatsApp users and the business said to each other, kept in memory.

The sandbox stands in for WhatsApp on one machine: one process, and a conversation that ends
with it. Consent, which must outlive it, stays in the bot's ledger.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass, field

STATUS_ORDER = ("sent", "delivered", "read")


def new_wamid() -> str:
    """A message id in Meta's style, unique across restarts: the bot keys its records on it."""
    return f"wamid.SANDBOX{uuid.uuid4().hex.upper()}"


@dataclass
class Entry:
    """One message: `in` from the user to the business, `out` from the business (the bot)."""

    id: str
    user: str
    direction: str
    kind: str  # text, button (a quick-reply tap), template, ...
    text: str
    at: float = field(default_factory=time.time)
    status: str | None = None  # of an `out` message: sent, delivered, read

    def as_json(self) -> dict:
        return asdict(self)


class Chats:
    """Every conversation, by user (a phone number or a BSUID); safe to use from the server's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_user: dict[str, list[Entry]] = {}
        self._by_id: dict[str, Entry] = {}

    def add(self, entry: Entry) -> Entry:
        with self._lock:
            self._by_user.setdefault(entry.user, []).append(entry)
            self._by_id[entry.id] = entry
        return entry

    def numbers(self) -> list[str]:
        """Users with a conversation, the most recent first."""
        with self._lock:
            return sorted(self._by_user, key=lambda user: self._by_user[user][-1].at, reverse=True)

    def transcript(self, user: str) -> list[Entry]:
        with self._lock:
            return list(self._by_user.get(user, []))

    def advance(self, message_id: str, status: str) -> bool:
        """Move an `out` message's status forward, as WhatsApp does; False when it is not forward."""
        with self._lock:
            entry = self._by_id.get(message_id)
            if entry is None:
                return False
            current = STATUS_ORDER.index(entry.status) if entry.status else -1
            if STATUS_ORDER.index(status) <= current:
                return False
            entry.status = status
            return True

    def unread(self, user: str) -> list[Entry]:
        """The business's messages to this user that the user has not read yet."""
        with self._lock:
            return [e for e in self._by_user.get(user, []) if e.direction == "out" and e.status != "read"]
