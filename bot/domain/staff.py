"""Staff as the records know them (SPEC §8): their roles, their email addresses, and the name
(`staff:EMAIL`) every event and message they cause is recorded under."""
from __future__ import annotations

import enum
import re

MAX_EMAIL = 254  # the longest address SMTP can deliver to (RFC 5321)
STAFF_PREFIX = "staff:"
MAX_ACTOR = len(STAFF_PREFIX) + MAX_EMAIL  # what recorded_by / requested_by columns hold
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+")


class Role(str, enum.Enum):
    """What a staff member may do; each role may do everything the ones before it may."""

    VIEWER = "viewer"  # read
    OPERATOR = "operator"  # also record consent, send, run campaigns, review
    ADMIN = "admin"  # also manage staff

    def covers(self, needed: Role) -> bool:
        """Whether this role may do what `needed` may."""
        order = list(Role)
        return order.index(self) >= order.index(needed)


class InvalidEmail(ValueError):
    """Not an email address a staff account can have; the message says why."""


def normalize_email(raw: object) -> str:
    """The address as accounts are kept: stripped and lowercased (people type it both ways)."""
    if not isinstance(raw, str):
        raise InvalidEmail("an email address must be text")
    email = raw.strip().lower()
    if len(email) > MAX_EMAIL:
        raise InvalidEmail(f"an email address has at most {MAX_EMAIL} characters")
    if not _EMAIL.fullmatch(email) or not email.isprintable():
        raise InvalidEmail(f"{email[:80]!r} is not an email address (name@example.com)")
    return email


def actor(email: str) -> str:
    """How records name what this staff member caused."""
    return f"{STAFF_PREFIX}{email}"
