"""Opt-ins from the hosted page, waiting for their confirmation from WhatsApp (R1: double opt-in).

Anyone can type anyone's number into a web form. So the page records nothing in the ledger: it
keeps a request (the number, and the web evidence: text shown, page version, time, client)
under a short code, and asks the visitor to send a message holding the code to the business
from WhatsApp. Only that message, arriving from the same number, makes the opt-in: it proves
the visitor holds the number, and it is user-initiated. A request nobody confirms expires and
changes nothing. Requests live in Redis, with their expiry; the ledger holds only confirmed ones.
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

import redis

KEY = "web-opt-in:"
LIFETIME = 3600  # seconds a request waits for its confirmation
_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I: people may type the code by hand
# How the code appears in the confirmation message: "OPTIN-K7P2QX9M", however the user's keyboard cased it.
_CODE = re.compile(r"\bOPT-?IN[\s-]*([A-HJ-NP-Z2-9]{8})\b", re.IGNORECASE)


@dataclass(frozen=True)
class WebOptIn:
    """A request from the page: whose number it names and what the page showed and saw."""

    code: str
    wa_id: str
    evidence: dict[str, Any]


def code_in(text: str) -> str | None:
    """The confirmation code a message holds, if any."""
    found = _CODE.search(text)
    return found.group(1).upper() if found else None


def confirmation_text(code: str, business: str) -> str:
    """The message the visitor sends from WhatsApp to confirm (prefilled by the wa.me link)."""
    return f"Yes, I want messages from {business} on WhatsApp. OPTIN-{code}"


class WebOptIns:
    def __init__(self, connection: redis.Redis):
        self._redis = connection

    def request(self, wa_id: str, evidence: dict[str, Any]) -> str:
        """Keep a request until it is confirmed or expires; its code."""
        while True:
            code = "".join(secrets.choice(_ALPHABET) for _ in range(8))
            if self._redis.set(KEY + code, json.dumps({"wa_id": wa_id, "evidence": evidence}), ex=LIFETIME, nx=True):
                return code

    def find(self, code: str) -> WebOptIn | None:
        """The request with this code, unless it expired. It is not removed when confirmed: a
        redelivered confirmation must find it again, and the ledger records it once."""
        kept = self._redis.get(KEY + code)
        if kept is None:
            return None
        request = json.loads(kept)
        return WebOptIn(code, request["wa_id"], request["evidence"])
