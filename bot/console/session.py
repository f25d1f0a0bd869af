"""The console's session, kept in one signed cookie (the app keeps no Flask session: see create_app).

The cookie holds the session's CSRF token and, once signed in, the account's email and
session generation. It is signed with SECRET_KEY (itsdangerous, HMAC-SHA256), so it cannot be
made or changed without the key; it is not encrypted, and holds nothing secret but the CSRF
token, which only a page of this console shows. A session ends after IDLE seconds without a
request, and a signed-in one ABSOLUTE seconds after signing in, whatever its use. Nothing here
knows Flask: times are given.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace

from itsdangerous import BadData, URLSafeSerializer

IDLE = 8 * 3600
ABSOLUTE = 24 * 3600
_SALT = "console-session"  # a key of its own, derived from SECRET_KEY: no other signed value passes as a session


@dataclass(frozen=True)
class ConsoleSession:
    csrf: str  # what every POST in this session must carry
    email: str | None = None  # the signed-in account, if any
    generation: int = 0  # the account's session generation when it signed in
    signed_in_at: float = 0.0

    @classmethod
    def anonymous(cls) -> ConsoleSession:
        """A session before sign-in: it has a CSRF token for the sign-in form, and nothing else."""
        return cls(csrf=secrets.token_urlsafe(32))

    def signed_in(self, email: str, generation: int, now: float) -> ConsoleSession:
        """This browser, signed in: a new CSRF token, so that one planted before sign-in is worthless."""
        return replace(ConsoleSession.anonymous(), email=email, generation=generation, signed_in_at=now)


class SessionCookies:
    def __init__(self, secret: str):
        self._serializer = URLSafeSerializer(secret, salt=_SALT, signer_kwargs={"digest_method": hashlib.sha256})

    def dump(self, session: ConsoleSession, now: float) -> str:
        """The cookie value for `session`, last used `now`."""
        return self._serializer.dumps({"c": session.csrf, "e": session.email, "g": session.generation, "s": session.signed_in_at, "t": now})

    def load(self, cookie: str, now: float) -> ConsoleSession | None:
        """The session the cookie holds; None when it is not ours, was changed, or has expired."""
        try:
            kept = self._serializer.loads(cookie)
            session = ConsoleSession(csrf=str(kept["c"]), email=kept["e"], generation=int(kept["g"]), signed_in_at=float(kept["s"]))
            last_used = float(kept["t"])
        except (BadData, KeyError, TypeError, ValueError):
            return None
        if now - last_used > IDLE or (session.email is not None and now - session.signed_in_at > ABSOLUTE):
            return None
        return session
