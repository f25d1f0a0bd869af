"""Staff accounts and their API tokens (SPEC §8). Nothing here knows Flask.

Passwords are kept as argon2id hashes: memory-hard, so a copied table is slow to crack. API
tokens are long random strings, so their SHA-256 is enough: only that is kept, and a token is
shown once, when made. An account's `session_generation` is written into each console session
it signs in: disabling the account, changing its password or signing out raises it, which ends
every session made before at once.
"""
from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.engine import Engine

from bot.domain.staff import InvalidEmail, Role, actor, normalize_email
from bot.storage.db import one_statement, reading
from bot.storage.ledger import as_utc, utc_now
from bot.storage.schema import staff_accounts, staff_tokens

TOKEN_PREFIX = "cfstaff_"  # recognisable in a leaked log or paste, and by secret scanners
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # hashing is deliberately slow: no megabyte passwords


class AccountRefused(ValueError):
    """A request about a staff account that cannot be done; `str()` is the one-line reason."""


@dataclass(frozen=True)
class StaffAccount:
    email: str
    role: Role
    must_change_password: bool  # true from `flask staff add` until its one-time password is replaced
    session_generation: int
    created_at: datetime
    created_by: str
    disabled_at: datetime | None

    @property
    def active(self) -> bool:
        return self.disabled_at is None

    @property
    def recorded_by(self) -> str:
        """What events and messages this account causes are recorded as: `staff:EMAIL`."""
        return actor(self.email)


def _account(row: sa.Row) -> StaffAccount:
    return StaffAccount(
        email=row.email, role=Role(row.role), must_change_password=row.must_change_password,
        session_generation=row.session_generation, created_at=as_utc(row.created_at), created_by=row.created_by,
        disabled_at=as_utc(row.disabled_at) if row.disabled_at else None,
    )


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class StaffAccounts:
    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utc_now, hasher: PasswordHasher | None = None):
        self.engine = engine
        self.clock = clock
        self.hasher = hasher or PasswordHasher()

    def add(self, email: str, role: Role, created_by: str) -> tuple[StaffAccount, str]:
        """Make an account that must choose its own password at first sign-in; the account and
        its one-time password (kept only as a hash: shown once, by the caller)."""
        email = _valid_email(email)
        one_time = secrets.token_urlsafe(12)
        try:
            with one_statement(self.engine) as conn:
                conn.execute(staff_accounts.insert().values(
                    email=email, role=role.value, password_hash=self.hasher.hash(one_time), must_change_password=True,
                    session_generation=0, created_at=self.clock(), created_by=created_by,
                ))
        except sa.exc.IntegrityError:
            raise AccountRefused(f"{email} already has an account") from None
        return self.get_existing(email), one_time

    def get(self, email: str) -> StaffAccount | None:
        row = self._row(email)
        return _account(row) if row else None

    def get_existing(self, email: str) -> StaffAccount:
        """The account, or AccountRefused naming the address that has none."""
        account = self.get(email)
        if account is None:
            raise AccountRefused(f"no staff account has the address {email[:80]!r}")
        return account

    def all(self) -> list[StaffAccount]:
        with reading(self.engine) as conn:
            return [_account(row) for row in conn.execute(sa.select(staff_accounts).order_by(staff_accounts.c.email))]

    def sign_in(self, email: str, password: str) -> StaffAccount | None:
        """The active account whose password this is, else None. A wrong address costs the same
        hashing time as a wrong password, so timing does not tell which addresses have accounts."""
        row = self._row(email)
        matches = self._verify(row.password_hash if row else self._decoy_hash, password)
        account = _account(row) if row else None
        return account if account and matches and account.active else None

    def change_password(self, email: str, current: str, new: str) -> StaffAccount:
        """Replace the password (ending every session signed in before): `current` must be the
        password now, `new` at least MIN_PASSWORD characters and not the same."""
        account = self.get_existing(email)
        if self.sign_in(email, current) is None:
            raise AccountRefused("the current password is wrong")
        if not MIN_PASSWORD <= len(new) <= MAX_PASSWORD:
            raise AccountRefused(f"the new password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        if new == current:
            raise AccountRefused("the new password must differ from the current one")
        with one_statement(self.engine) as conn:
            conn.execute(staff_accounts.update().where(staff_accounts.c.email == account.email).values(
                password_hash=self.hasher.hash(new), must_change_password=False,
                session_generation=staff_accounts.c.session_generation + 1,
            ))
        return self.get_existing(account.email)

    def end_sessions(self, email: str) -> None:
        """Sign the account out of every console session it has."""
        with one_statement(self.engine) as conn:
            conn.execute(staff_accounts.update().where(staff_accounts.c.email == normalize_email(email)).values(
                session_generation=staff_accounts.c.session_generation + 1,
            ))

    def disable(self, email: str) -> StaffAccount:
        """Disable the account: its sessions and tokens stop working at once. Disabling it again changes nothing."""
        account = self.get_existing(email)
        with one_statement(self.engine) as conn:
            conn.execute(
                staff_accounts.update()
                .where(staff_accounts.c.email == account.email, staff_accounts.c.disabled_at.is_(None))
                .values(disabled_at=self.clock(), session_generation=staff_accounts.c.session_generation + 1)
            )
        return self.get_existing(account.email)

    def issue_token(self, email: str, created_by: str) -> tuple[StaffAccount, str]:
        """A new API token that acts as the account, with its role: the account and the token
        (kept only as a digest: shown once, by the caller)."""
        account = self.get_existing(email)
        if not account.active:
            raise AccountRefused(f"{account.email} is disabled")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with one_statement(self.engine) as conn:
            conn.execute(staff_tokens.insert().values(
                digest=token_digest(token), email=account.email, created_at=self.clock(), created_by=created_by,
            ))
        return account, token

    def by_token(self, token: str) -> StaffAccount | None:
        """The account a token was issued to, disabled or not; None for a token never issued."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        query = sa.select(staff_accounts).join(staff_tokens, staff_tokens.c.email == staff_accounts.c.email)
        with reading(self.engine) as conn:
            row = conn.execute(query.where(staff_tokens.c.digest == token_digest(token))).first()
        return _account(row) if row else None

    def _row(self, email: str) -> sa.Row | None:
        try:
            email = normalize_email(email)
        except InvalidEmail:
            return None
        with reading(self.engine) as conn:
            return conn.execute(sa.select(staff_accounts).where(staff_accounts.c.email == email)).first()

    def _verify(self, password_hash: str, password: str) -> bool:
        if len(password) > MAX_PASSWORD:
            return False
        try:
            return self.hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    @functools.cached_property
    def _decoy_hash(self) -> str:
        """A hash of nothing anyone knows, verified against when the address has no account."""
        return self.hasher.hash(secrets.token_urlsafe(16))


def _valid_email(raw: str) -> str:
    try:
        return normalize_email(raw)
    except InvalidEmail as error:
        raise AccountRefused(str(error)) from None
