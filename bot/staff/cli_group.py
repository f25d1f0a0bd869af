"""Commands that use the database: they refuse to run on a schema that is not this code's, and
fail in one line, not a traceback, when the database or Redis does not answer."""
from __future__ import annotations

from collections.abc import Sequence

import click
import redis
import sqlalchemy as sa
from flask.cli import ScriptInfo

from bot.services import services_of
from bot.settings import ConfigError
from bot.storage.migrate import require_current


class DatabaseCommands(click.Group):
    """A command group whose commands first check the schema (unless `schema_checked=False`: the
    commands that change it), then turn a database or Redis outage into a one-line reason (exit 1).
    What a command recorded before the outage stays recorded."""

    def __init__(self, *args, schema_checked: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.schema_checked = schema_checked

    def invoke(self, ctx: click.Context):
        try:
            if self.schema_checked:
                require_current(services_of(ctx.ensure_object(ScriptInfo).load_app()).engine)
            return super().invoke(ctx)
        except ConfigError as error:  # the schema is behind, or the database cannot be opened
            raise click.ClickException(str(error)) from None
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
            reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
            raise click.ClickException(f"the database does not answer ({reason})") from None
        except redis.RedisError as error:
            raise click.ClickException(f"Redis does not answer ({error})") from None


def echo_table(rows: Sequence[tuple[str, ...]]) -> None:
    """Print rows (the first one a header) as columns lined up with spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
