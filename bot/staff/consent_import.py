"""Reading consent gathered off WhatsApp from a CSV file (R1, R3, R4).

Every row must carry what the person agreed to and evidence of it, like any staff-recorded
opt-in; a row without them (an existing customer, an email subscriber) is rejected with its
line number and reason, never recorded. Each row's source reference is a digest of its
content, so importing the same file again records nothing new.
"""
from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from bot import json_bodies
from bot.domain.consent import EventDraft, InvalidEvent, check_draft
from bot.staff.request_rules import CONSENT_FIELDS, InvalidField, consent_draft, unicode_field
from bot.storage.ledger import canonical_json, utc_now

RECORDED_BY = "staff:import"
REQUIRED_COLUMNS = {"wa_id", "channel", "occurred_at"}


class BadFile(ValueError):
    """The file cannot be imported at all (no header, missing columns); the message says why."""


@dataclass(frozen=True)
class Row:
    line: int
    draft: EventDraft | None = None
    problem: str | None = None  # why the row is rejected


def read_rows(file: TextIO) -> Iterator[Row]:
    """Each data row as a draft to record or a rejection, in file order."""
    reader = csv.DictReader(file)
    try:
        names = [(name or "").strip() for name in reader.fieldnames or []]
    except csv.Error as error:
        raise BadFile(f"the header row cannot be read: {error}") from None
    _check_columns(names)
    line = reader.line_num
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as error:  # a cell over the csv module's 128 KiB limit, a NUL byte
            line += 1  # the reader stopped inside it: the line after the last one read
            yield Row(line, problem=f"the row cannot be read: {error}")
            continue
        line = reader.line_num
        if None in record:
            yield Row(line, problem="more cells than header columns")
            continue
        try:
            draft = _draft(record)
            check_draft(draft, utc_now())  # the ledger's own rules, checked now so that the line can be named
        except (InvalidField, InvalidEvent) as error:
            yield Row(line, problem=str(error))
        else:
            yield Row(line, draft=draft)


def _check_columns(names: list[str]) -> None:
    columns = set(names)
    twice = sorted({name for name in names if name and names.count(name) > 1})
    if twice:
        raise BadFile(f"the header row names {', '.join(twice)} more than once: which cell would count?")
    if not columns:
        raise BadFile("the file is empty: expected a header row with wa_id, channel, consent_text, evidence, occurred_at")
    missing = sorted(REQUIRED_COLUMNS - columns)
    if missing:
        raise BadFile(f"the header row lacks the column(s) {', '.join(missing)}")
    unknown = sorted(columns - CONSENT_FIELDS)
    if unknown:
        raise BadFile(f"unknown column(s) {', '.join(unknown)} (expected: {', '.join(sorted(CONSENT_FIELDS))})")


def _draft(record: dict[str, str | None]) -> EventDraft:
    fields: dict[str, object] = {key.strip(): value.strip() for key, value in record.items() if value and value.strip()}
    fields.setdefault("action", "opt_in")
    if "occurred_at" not in fields:
        raise InvalidField("occurred_at", "is required: when the person agreed")
    if "evidence" in fields:
        fields["evidence"] = _evidence(str(fields["evidence"]))
    digest = hashlib.sha256(canonical_json(fields).encode()).hexdigest()
    return consent_draft(fields, f"import:{digest}", RECORDED_BY)


def _evidence(cell: str) -> dict:
    """A JSON object, or a plain reference such as a form number or a recording's file name."""
    if not cell.startswith("{"):
        return {"reference": cell}
    try:
        value = json_bodies.loads(cell)
    except json_bodies.UnreadableJson as unreadable:
        raise InvalidField("evidence", f"starts with {{ but is not a JSON object: it is {unreadable}") from None
    if not isinstance(value, dict):
        raise InvalidField("evidence", "must be a JSON object or a plain reference")
    return unicode_field(value, "evidence")  # checked before the row's digest is taken
