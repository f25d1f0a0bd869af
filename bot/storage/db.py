"""Engines and connections for the ledger database (SQLite by default, PostgreSQL in production)."""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

WRITE_OPTION = "ledger_write"  # execution option marking a transaction that will write


class WriteConflict(Exception):
    """Another transaction wrote the same key while this one was under way: do it all again."""


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads that need no snapshot across statements: on PostgreSQL in
    autocommit, without BEGIN and ROLLBACK round trips."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


@contextmanager
def one_statement(engine: Engine) -> Iterator[Connection]:
    """A connection for one writing statement. On PostgreSQL it runs in autocommit, so the
    statement is its own durable transaction without BEGIN and COMMIT round trips; on SQLite
    it is a write transaction."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")
    else:
        with writer(engine).begin() as conn:
            yield conn


def json_rows(table: sa.Table) -> sa.TableValuedAlias:
    """PostgreSQL: the rows of a multi-row INSERT ... SELECT, sent as one JSON array in the
    parameter `rows` (`as_json_rows`). The statement stays the same whatever the number of rows,
    so it is prepared once; one string costs the driver far less than a list per column, or a
    VALUES clause it would parse again for every new length."""
    rows = sa.cast(sa.bindparam("rows", type_=sa.Text), postgresql.JSON)
    # Columns by name: a migrated table may hold them in another order than the code lists them.
    return (
        sa.func.json_populate_recordset(sa.literal_column(f"NULL::{table.name}"), rows)
        .table_valued(*(column.name for column in table.c))
        .alias(f"new_{table.name}")
    )


def json_records(name: str, *columns: sa.ColumnClause) -> sa.TableValuedAlias:
    """PostgreSQL: like `json_rows`, for rows that are not a table's (typed `columns`)."""
    rows = sa.cast(sa.bindparam("rows", type_=sa.Text), postgresql.JSON)
    return sa.func.json_to_recordset(rows).table_valued(*columns).render_derived(name=name, with_types=True)


def string_array(name: str) -> sa.Cast:
    """PostgreSQL: a list of strings as one array parameter, so that `= ANY(...)` stays one
    prepared statement whatever the list's length, and its plan can use an index."""
    return sa.cast(sa.bindparam(name), postgresql.ARRAY(sa.String))


def as_json_rows(rows: list[dict]) -> str:
    """Rows for `json_rows`: times in ISO 8601, non-ASCII escaped."""
    return json.dumps(rows, default=_iso_time)


def _iso_time(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a column value")


def insert_once(conn: Connection, table: sa.Table, key: list[str]) -> sa.Insert:
    """An INSERT into `table` that does nothing where a row with the same `key` (the columns of
    a unique index) is already there."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=key)


def writer(engine: Engine) -> Engine:
    """The engine for transactions that write: on SQLite they take the write lock up front."""
    return engine.execution_options(**{WRITE_OPTION: True})


def engine_url(url: str) -> str:
    """Accept the usual PaaS spellings of a PostgreSQL URL and use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str) -> Engine:
    """Create an engine whose commits are durable and whose writers queue instead of failing.

    Its errors never carry the statement's parameters: they hold phone numbers, and error
    texts end up in logs.
    """
    url = engine_url(url)
    if not url.startswith("sqlite"):
        # Send workers run many threads, each holding a connection for one short statement: a
        # fixed pool (no overflow churn of new server processes). No pre-ping round trip per
        # checkout: a connection found dead invalidates the pool and the caller's work is retried.
        return sa.create_engine(url, pool_size=20, max_overflow=0, pool_timeout=30, pool_recycle=1800, hide_parameters=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

    @sa.event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # let the begin hook below issue BEGIN
        cursor = dbapi_connection.cursor()
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection):
        # Writers take the lock up front (two readers upgrading to writers would deadlock);
        # readers stay concurrent under WAL.
        write = connection.get_execution_options().get(WRITE_OPTION)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _switch_to_wal(cursor: sqlite3.Cursor, patience: float = 30.0) -> None:
    """Turning a new database file to WAL takes an exclusive lock, and SQLite answers "database
    is locked" at once, without its busy timeout, while another process (a web process and a
    worker starting together) holds one: wait for it."""
    deadline = time.monotonic() + patience
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
