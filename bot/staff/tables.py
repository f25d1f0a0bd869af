"""Plain-text tables for the staff commands: each column as wide as its widest cell."""
from __future__ import annotations

from collections.abc import Sequence

import click


def echo_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print the rows under the header; a column of whole numbers is aligned right, to compare at a glance."""
    table = [list(header), *map(list, rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    numeric = [bool(rows) and all(row[i].isdigit() for row in rows) for i in range(len(header))]
    for row in table:
        cells = (cell.rjust(width) if right else cell.ljust(width) for cell, width, right in zip(row, widths, numeric, strict=True))
        click.echo("  ".join(cells).rstrip())
