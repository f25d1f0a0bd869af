"""Signed, expiring tokens for the hosted forms (CSRF protection, double-submit cookie).

A token is `issued.nonce.signature`. The page puts it in the form and in a SameSite cookie;
a submission counts only when both match and the signature and age hold, so another site
cannot post the form on a visitor's behalf. The nonce also names the submission in the
ledger, so a double click records one event.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time

MAX_AGE = 2 * 3600  # seconds a form stays usable


def issue(secret: str, now: float | None = None) -> str:
    issued = str(int(now if now is not None else time.time()))
    nonce = secrets.token_urlsafe(16)
    return f"{issued}.{nonce}.{_sign(secret, issued, nonce)}"


def nonce_if_valid(secret: str, token: str, cookie: str | None, now: float | None = None) -> str | None:
    """The token's nonce when the form and cookie carry the same, genuine, fresh token; else None."""
    if not token or not cookie or not hmac.compare_digest(token.encode(), cookie.encode()):
        return None
    parts = token.split(".")
    if len(parts) != 3 or not parts[0].isdigit():
        return None
    issued, nonce, signature = parts
    if not hmac.compare_digest(signature.encode(), _sign(secret, issued, nonce).encode()):
        return None
    age = (now if now is not None else time.time()) - int(issued)
    return nonce if 0 <= age <= MAX_AGE else None


def _sign(secret: str, issued: str, nonce: str) -> str:
    return hmac.new(secret.encode(), f"{issued}.{nonce}".encode(), hashlib.sha256).hexdigest()
