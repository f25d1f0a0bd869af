"""A campaign's list of recipients read from a CSV file, the same for `flask campaign send` and
the console's upload: the wa_id (or phone, or number) column, or the file's only column."""
from __future__ import annotations

import csv
from typing import TextIO

COLUMNS = ("wa_id", "phone", "number")


class BadList(ValueError):
    """The file cannot be read as a list of recipients; `str()` says why, naming the file."""


def read_recipients(file: TextIO, name: str) -> list[str]:
    """One entry per data row, blank rows included (as ""), so that the campaign counts them.

    `file` must be opened with newline="" (the csv module's rule); `name` is what messages call it.
    """
    try:
        rows = list(csv.reader(file))
    except UnicodeDecodeError:
        raise BadList(f"{name} is not UTF-8 text; save it as CSV UTF-8") from None
    except csv.Error as error:
        raise BadList(f"{name} cannot be read as CSV: {error}") from None
    if not rows:
        raise BadList(f"{name} is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    for column in COLUMNS:
        if column in header:
            at = header.index(column)
            return [row[at].strip() if len(row) > at else "" for row in rows[1:]]
    if len(header) == 1:
        return [row[0].strip() if row else "" for row in rows]
    raise BadList(f"{name}: no wa_id column in {', '.join(header)}")
