"""A progress bar for long staff commands: counts, rate, and a time estimate, on standard error."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click


@contextmanager
def progress_bar(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """Yields `done(n)`: tell the bar that n items in all are handled. Drawn only on a terminal."""
    started = time.monotonic()
    shown = 0
    with click.progressbar(
        length=max(total, 1), label=label, show_pos=True, file=sys.stderr, item_show_func=lambda rate: rate,
    ) as bar:

        def done(count: int) -> None:
            nonlocal shown
            rate = count / max(time.monotonic() - started, 1e-6)
            bar.update(count - shown, f"{rate:,.0f}/s")
            shown = count

        yield done
