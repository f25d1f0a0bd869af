"""Meta's template catalog (SPEC §7): the category and status a template send is decided on.

The caller's word on a template's category is not trusted: a template Meta files as marketing
needs marketing consent whatever it was sent as. The catalog is replaced whole by `sync` (only
once every page was read: a failed sync keeps the last good one) and changed by Meta's
`message_template_status_update` and `template_category_update` webhooks. Nothing here knows Flask.
"""
from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bot.domain.policy import MessageKind, Refusal
from bot.outbound.graph_errors import CloudApiError
from bot.storage.db import reading, writer
from bot.storage.ledger import as_utc, utc_now
from bot.storage.schema import message_templates

APPROVED = "APPROVED"
FRESH_FOR = 1.0  # seconds a process decides on its copy of catalog entries (TemplateCatalog)
WHOLE_SECOND = timedelta(seconds=1)  # Meta times its webhooks in whole seconds: a change in the second of a sync may be after it
PARAMETERISED = ("header", "body")  # the parts whose parameter count Meta checks against the template
PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")  # {{1}}, or {{first_name}} in a template with named parameters
MEDIA_HEADERS = {"IMAGE", "VIDEO", "DOCUMENT", "LOCATION"}  # a header that takes its one parameter as media
KINDS = {
    "MARKETING": MessageKind.MARKETING_TEMPLATE,
    "UTILITY": MessageKind.UTILITY_TEMPLATE,
    "AUTHENTICATION": MessageKind.AUTHENTICATION_TEMPLATE,
}


class SyncFailed(Exception):
    """The catalog could not be read whole; `str()` is the one-line reason. The last good one stays."""


@dataclass(frozen=True)
class CatalogTemplate:
    name: str
    language: str
    status: str
    category: str
    quality: str | None
    components: list
    synced_at: datetime

    def parameter_mismatch(self, components: list[dict]) -> str | None:
        """Why Meta would refuse these send components (error 132000), counting the header's
        and the body's parameters against this template's; None when they match."""
        expected, given = _parameters_taken(self.components), _parameters_given(components)
        wrong = [
            f"{expected.get(part, 0)} {part} parameter(s), {given.get(part, 0)} given"
            for part in PARAMETERISED if expected.get(part, 0) != given.get(part, 0)
        ]
        return f"template {self.name} ({self.language}) takes {'; '.join(wrong)}" if wrong else None

    def as_dict(self) -> dict:
        return {
            "name": self.name, "language": self.language, "status": self.status, "category": self.category.lower(),
            "quality": self.quality, "components": self.components, "synced_at": self.synced_at.isoformat(),
        }


def verdict(entry: CatalogTemplate | None) -> MessageKind | Refusal:
    """The kind the policy decides a template send on, or why it may not be sent at all."""
    if entry is None:
        return Refusal.TEMPLATE_UNKNOWN
    if entry.status != APPROVED or entry.category not in KINDS:
        return Refusal.TEMPLATE_NOT_APPROVED
    return KINDS[entry.category]


class TemplateCatalog:
    """The catalog in the database, with each process's copy of the entries it was asked for:
    the send loop decides a wave of messages many times a second, and a query per wave for a
    table that changes a few times a day cost it more than the consent check itself. The copy
    is trusted for FRESH_FOR seconds (a change made by another process, a webhook in the web
    process for a worker, decides sends within that), and dropped at once on this process's changes."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utc_now):
        self.engine = engine
        self.clock = clock
        self._copy: dict[tuple[str, str], CatalogTemplate | None] = {}  # None: read, and not in the catalog
        self._copied_at = -math.inf

    def sync(self, pages: Iterator[list[dict]]) -> int:
        """Replace the catalog with the one Meta lists, in one transaction once every page was
        read; how many templates it holds. Raises SyncFailed with the reason otherwise."""
        now = self.clock()
        rows: dict[tuple[str, str], dict] = {}
        try:
            for page in pages:
                for item in page:
                    row = _row(item, now)
                    if row is not None:
                        rows[(row["name"], row["language"])] = row
        except CloudApiError as error:
            raise SyncFailed(f"the template catalog could not be read: {error}") from None
        with writer(self.engine).begin() as conn:
            conn.execute(message_templates.delete())
            if rows:
                conn.execute(message_templates.insert(), list(rows.values()))
        self.forget_copy()
        return len(rows)

    def get(self, name: str, language: str) -> CatalogTemplate | None:
        return self.lookup([(name, language)]).get((name, language))

    def lookup(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], CatalogTemplate]:
        """The catalog's entries for these (name, language), from this process's copy when it is
        fresh, else in one read; absent ones are left out."""
        keys = set(keys)
        if time.monotonic() - self._copied_at > FRESH_FOR:
            self._copy, self._copied_at = {}, time.monotonic()
        copy = self._copy  # another thread may start a new copy meanwhile: this one stays whole
        missing = {key for key in keys if key not in copy}
        if missing:
            names = {name for name, _ in missing}
            with reading(self.engine) as conn:
                found = conn.execute(sa.select(message_templates).where(message_templates.c.name.in_(names))).mappings()
                read = {(row["name"], row["language"]): _entry(row) for row in found}
            copy.update(dict.fromkeys(missing) | read)
        return {key: entry for key in keys if (entry := copy.get(key)) is not None}

    def forget_copy(self) -> None:
        """Read the catalog afresh next time: it was just changed by this process."""
        self._copied_at = -math.inf

    def all(self) -> list[CatalogTemplate]:
        with reading(self.engine) as conn:
            query = sa.select(message_templates).order_by(message_templates.c.name, message_templates.c.language)
            return [_entry(row) for row in conn.execute(query).mappings()]

    def freshness(self) -> tuple[int, datetime | None]:
        """How many templates the catalog holds, and when the oldest of them was read from Meta."""
        with reading(self.engine) as conn:
            count, oldest = conn.execute(sa.select(sa.func.count(), sa.func.min(message_templates.c.synced_at))).one()
        return count, as_utc(oldest) if oldest else None

    def update(self, conn: Connection, name: str, language: str | None, at: datetime | None = None, **values: str) -> int:
        """Change the status or category of a template Meta told us about (in the webhook's
        transaction); every language of it when the webhook names none. A change from `at`,
        before the last sync, is already in the catalog (or undone since). How many rows changed."""
        where = message_templates.c.name == name
        if language:
            where &= message_templates.c.language == language
        if at is not None:
            where &= message_templates.c.synced_at < at + WHOLE_SECOND
        self.forget_copy()
        return conn.execute(message_templates.update().where(where).values(**values)).rowcount


def _parameters_taken(components: list) -> dict[str, int]:
    """Per part (header, body), how many parameters the template's text asks for."""
    return {part: len(names) for part, names in placeholders(components).items()}


def placeholders(components: list) -> dict[str, list[str]]:
    """Per part (header, body) of a catalog template, the parameters it takes, in order: each
    distinct {{1}} or {{name}} once by its name, or a media or location header's format."""
    taken = {}
    for part in components:
        kind = str(part.get("type", "")).lower() if isinstance(part, dict) else ""
        if kind in PARAMETERISED:
            header_format = str(part.get("format", "TEXT")).upper()
            media = kind == "header" and header_format in MEDIA_HEADERS
            taken[kind] = [header_format] if media else list(dict.fromkeys(PLACEHOLDER.findall(str(part.get("text", "")))))
    return taken


def _parameters_given(components: list[dict]) -> dict[str, int]:
    given: dict[str, int] = {}
    for part in components:
        kind, parameters = str(part.get("type", "")).lower(), part.get("parameters", [])
        if kind in PARAMETERISED:
            given[kind] = given.get(kind, 0) + (len(parameters) if isinstance(parameters, list) else 0)
    return given


def _row(item: dict, now: datetime) -> dict | None:
    name, language = item.get("name"), item.get("language")
    if not isinstance(name, str) or not isinstance(language, str):
        return None
    quality = item.get("quality_score")
    return {
        "name": name, "language": language, "status": str(item.get("status", "")).upper(),
        "category": str(item.get("category", "")).upper(),
        "quality": str(quality.get("score")) if isinstance(quality, dict) and quality.get("score") else None,
        "components": json.dumps(item.get("components", []), ensure_ascii=False), "synced_at": now,
    }


def _entry(row: sa.RowMapping) -> CatalogTemplate:
    return CatalogTemplate(
        row["name"], row["language"], row["status"], row["category"], row["quality"], json.loads(row["components"]),
        as_utc(row["synced_at"]),
    )
