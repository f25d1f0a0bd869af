"""Schema migrations: `flask db upgrade` brings a database to this code's revision, and every
process checks at start that its database is there (it never changes the schema itself).

The revisions live in bot/storage/migrations/ (Alembic). The first one adopts a database made
before migrations existed, when every process created missing tables at start: it creates what
is missing and leaves every stored row as it is.
"""
from __future__ import annotations

import functools
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from bot.settings import ConfigError
from bot.storage.db import writer

MIGRATIONS = Path(__file__).with_name("migrations")
_VERSION_TABLE = sa.table("alembic_version", sa.column("version_num", sa.String))  # Alembic's own
_UPGRADE_LOCK = 727274  # PostgreSQL advisory lock: release steps that start together take turns


class SchemaNotCurrent(ConfigError):
    """The database's schema is not the one this code was written for."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    """The revision this code needs."""
    head = _scripts().get_current_head()
    assert head is not None, "bot/storage/migrations has no revision"
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision; None for an empty database or one from before migrations."""
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(_VERSION_TABLE.name):
                return None
            return conn.execute(sa.select(_VERSION_TABLE.c.version_num)).scalar()
    except sa.exc.OperationalError as error:
        location = engine.url.render_as_string(hide_password=True)
        reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
        raise ConfigError(f"cannot open the ledger database {location}: {reason}") from None


def upgrade(engine: Engine, target: str = "head") -> tuple[str | None, str | None]:
    """Bring the database to `target` in one transaction; returns the revisions before and after."""
    before = current_revision(engine)
    try:
        with writer(engine).begin() as conn:  # on SQLite the write lock is taken up front
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_UPGRADE_LOCK})")
            command.upgrade(_config(conn), target)
    except CommandError as error:  # a revision refused this database; nothing was changed
        raise ConfigError(f"the schema upgrade stopped: {error}") from None
    return before, current_revision(engine)


def require_current(engine: Engine) -> None:
    """Raise SchemaNotCurrent, with a one-line reason naming `flask db upgrade`, unless the
    database is at this code's revision."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    location = engine.url.render_as_string(hide_password=True)
    if current is None:
        raise SchemaNotCurrent(f"the database {location} has no schema for this version: run `flask db upgrade`")
    try:
        _scripts().get_revision(current)
    except CommandError:
        raise SchemaNotCurrent(
            f"the database {location} is at schema revision {current}, which this code does not know (a newer version upgraded it)"
        ) from None
    raise SchemaNotCurrent(f"the database {location} is at schema revision {current}, this code needs {head}: run `flask db upgrade`")
