"""Database engine and schema for the consent ledger (SQLite by default, PostgreSQL in production)."""
from __future__ import annotations

import sqlite3
import time
import json
from contextlib import contextmanager
from datetime import datetime
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

metadata = sa.MetaData()

GENESIS_HASH = "0" * 64
WRITE_OPTION = "ledger_write"  # execution option marking a transaction that will write

consent_events = sa.Table(
    "consent_events",
    metadata,
    # seq is gapless and assigned under the chain lock, so a deleted event leaves a hole.
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    sa.Column("wa_id", sa.String(15), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("basis", sa.String(16)),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("consent_text", sa.Text),
    # Kept as the exact canonical JSON text that was hashed (JSONB would reorder keys).
    sa.Column("evidence", sa.Text, nullable=False),
    sa.Column("source_ref", sa.String(255), nullable=False, unique=True),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("recorded_by", sa.String(64), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index("ix_consent_events_wa_id_seq", "wa_id", "seq"),
    sa.Index("ix_consent_events_occurred_at", "occurred_at"),
)

# One row: the newest event's seq and hash. Writers lock it to extend the chain one at a time,
# and verification compares it with the last event, so truncating the tail is detected too.
ledger_head = sa.Table(
    "ledger_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# Conversation facts that are not consent evidence: when the user last wrote (the 24-hour window).
contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("wa_id", sa.String(15), primary_key=True),
    sa.Column("last_inbound_at", sa.DateTime(timezone=True), nullable=False),
)

# What the business sends, one row per message: the outbox the queue and the workers work from.
# Rows change state (queued -> sent -> delivered -> read, or failed / blocked); the consent
# ledger stays append-only. A claim is a lease: a worker that dies mid-send lets it expire.
outbound_messages = sa.Table(
    "outbound_messages",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
    sa.Column("wa_id", sa.String(15), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("content", sa.Text, nullable=False),  # JSON: {"text": ...} or {"template": {...}}
    sa.Column("queue", sa.String(16), nullable=False),
    sa.Column("campaign_id", sa.String(64)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(32)),  # why it was blocked or failed, in SPEC's vocabulary
    sa.Column("error_code", sa.Integer),
    sa.Column("error_detail", sa.Text),
    sa.Column("consent_event_id", sa.String(36)),  # the ledger event that allowed it
    sa.Column("meta_message_id", sa.String(255), unique=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("not_before", sa.DateTime(timezone=True)),
    sa.Column("lease_until", sa.DateTime(timezone=True)),
    sa.Column("requested_by", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Index("ix_outbound_messages_state_not_before", "state", "not_before"),
    sa.Index("ix_outbound_messages_campaign_id", "campaign_id"),
)

# Statuses that arrived before the send that produced them was recorded (Meta can be quicker
# than our own bookkeeping); the sweeper applies them once the message has its Meta id.
early_statuses = sa.Table(
    "early_statuses",
    metadata,
    sa.Column("meta_message_id", sa.String(255), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("error_code", sa.Integer),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)

# A template sent to a list. Its messages are outbound_messages rows with its id; while
# paused_at is set, none of them is claimed for sending.
campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("template_name", sa.String(512), nullable=False),
    sa.Column("template", sa.Text, nullable=False),  # JSON: name, language, components
    sa.Column("category", sa.String(16), nullable=False),
    sa.Column("recipients", sa.Integer, nullable=False),
    sa.Column("requested_by", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("paused_at", sa.DateTime(timezone=True)),
    sa.Column("pause_reason", sa.String(255)),
)

# account_update, phone_number_quality_update and message_template_status_update, kept for staff.
account_notices = sa.Table(
    "account_notices",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("field", sa.String(64), nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("details", sa.Text, nullable=False),
)

# Signed webhook items we could not read, kept as they came so that nothing is silently dropped.
unread_webhooks = sa.Table(
    "unread_webhooks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reason", sa.String(255), nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
)

_APPEND_ONLY_TRIGGERS = {
    "sqlite": [
        f"CREATE TRIGGER IF NOT EXISTS consent_events_no_{op} BEFORE {op.upper()} ON consent_events "
        "BEGIN SELECT RAISE(ABORT, 'consent_events is append-only'); END"
        for op in ("update", "delete")
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION consent_events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'consent_events is append-only'; END $$",
        "DROP TRIGGER IF EXISTS consent_events_append_only ON consent_events",
        "CREATE TRIGGER consent_events_append_only BEFORE UPDATE OR DELETE ON consent_events "
        "FOR EACH ROW EXECUTE FUNCTION consent_events_append_only()",
    ],
}


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
    return (
        sa.func.json_populate_recordset(sa.literal_column(f"NULL::{table.name}"), rows)
        .table_valued(*(column.name for column in table.c))
        .render_derived(name=f"new_{table.name}")
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


def init_schema(engine: Engine) -> None:
    """Create missing tables, the append-only triggers and the chain head. Safe to run at every start."""
    with writer(engine).begin() as conn:
        if engine.dialect.name == "postgresql":
            # Several processes may start at once; serialise their schema creation.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
        metadata.create_all(conn)
        for statement in _APPEND_ONLY_TRIGGERS.get(engine.dialect.name, []):
            conn.exec_driver_sql(statement)
        if conn.execute(sa.select(ledger_head.c.id)).first() is None:
            conn.execute(ledger_head.insert().values(id=1, seq=0, hash=GENESIS_HASH))
