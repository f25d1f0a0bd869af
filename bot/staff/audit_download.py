"""The ledger export as an HTTP download, for the staff API's GET /api/v1/audit and the console's
Audit page alike: the same filters, checked the same way, and the same streamed file."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime

from flask import Response, stream_with_context

from bot.staff.audit import FORMATS, export_lines
from bot.staff.request_rules import InvalidField, identifier_field, timestamp_field
from bot.storage.ledger import Ledger

# Whole Content-Type values: given as a mimetype, a text/* type would get a second charset from Flask.
EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}


def export_response(ledger: Ledger, args: Mapping[str, str], naive_is_utc: bool = False) -> Response:
    """The export `args` ask for (format, since, until, wa_id; an empty filter is none), streamed as
    an attachment. Raises InvalidField for a filter that cannot be used, before anything is read.
    `naive_is_utc` reads a time without a zone as UTC (a browser's date-time field has none)."""
    fmt = args.get("format", "csv")
    if fmt not in FORMATS:
        raise InvalidField("format", f"must be one of {', '.join(FORMATS)}")
    since, until = (_time_arg(args, name, naive_is_utc) for name in ("since", "until"))
    who = args.get("wa_id")
    events = ledger.events(since, until, identifier_field(who) if who else None)
    response = Response(stream_with_context(_in_chunks(export_lines(events, fmt))), content_type=EXPORT_TYPES[fmt])
    response.headers["Content-Disposition"] = f'attachment; filename="consent-ledger.{fmt}"'
    return response


def _in_chunks(lines: Iterator[str], size: int = 64 * 1024) -> Iterator[str]:
    """Lines grouped into pieces of about `size` characters: one socket write per piece, not per event."""
    piece: list[str] = []
    length = 0
    for line in lines:
        piece.append(line)
        length += len(line)
        if length >= size:
            yield "".join(piece)
            piece, length = [], 0
    if piece:
        yield "".join(piece)


def _time_arg(args: Mapping[str, str], name: str, naive_is_utc: bool) -> datetime | None:
    value = args.get(name)
    return timestamp_field(value, name, naive_is_utc) if value else None
