"""Audit export: the ledger as CSV or JSON Lines, one event per line, streamed."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator

from bot.domain.consent import ConsentEvent

FORMATS = ("csv", "jsonl")
COLUMNS = (
    "seq", "event_id", "wa_id", "user_id", "person_id", "action", "scope", "basis", "channel", "consent_text", "evidence",
    "source_ref", "occurred_at", "recorded_at", "recorded_by", "prev_hash", "hash",
)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: object) -> object:
    """Neutralise spreadsheet formulas in free text: a cell starting with = + - @ is prefixed with '."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def export_lines(events: Iterable[ConsentEvent], fmt: str) -> Iterator[str]:
    """Yield the export line by line (CSV starts with a header), never holding the whole ledger."""
    if fmt == "jsonl":
        for event in events:
            yield json.dumps(event.as_dict(), ensure_ascii=False, sort_keys=True) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for event in events:
        row = event.as_dict()
        row["evidence"] = json.dumps(row["evidence"], ensure_ascii=False, sort_keys=True)
        writer.writerow([_csv_cell(row[column]) for column in COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()
