"""Staff commands fail in one line, not a traceback, when the database or Redis does not answer."""
from __future__ import annotations

import click
import redis
import sqlalchemy as sa


class OutageAware(click.Group):
    """A command group whose commands turn a database or Redis outage into a one-line reason
    (exit 1). What a command recorded before the outage stays recorded."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
            reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
            raise click.ClickException(f"the database does not answer ({reason})") from None
        except redis.RedisError as error:
            raise click.ClickException(f"Redis does not answer ({error})") from None
