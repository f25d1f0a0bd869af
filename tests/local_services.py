"""The local PostgreSQL and free ports, shared by the tests and the benchmarks."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from bot.storage.db import make_engine
from bot.storage.migrate import upgrade

POSTGRES_SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# "gw0", "gw1", ... in a pytest-xdist worker (`python3 dev.py test` runs two); None in a plain run.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
# Redis databases a worker never takes unless told to: `python3 dev.py start`'s default (0) and
# the benchmarks' (bench/*.py: 5, 10, 12, 14), which empty theirs as the tests do.
RESERVED_REDIS_DBS = frozenset({0, 5, 10, 12, 14})


def postgres_schema_of_worker(schema: str, worker: str | None) -> str:
    """The schema for one xdist worker: `bot_test` becomes `bot_test_gw0`, `bot_test_gw1`, ...
    (the schema itself in a plain run), so that workers never see each other's rows."""
    return schema if worker is None else f"{schema}_{worker}"


def redis_url_of_worker(url: str, worker: str | None) -> str:
    """The Redis database for one xdist worker: the first (gw0) takes the one in `url`, the next
    ones the databases after it, wrapping past 15 and skipping RESERVED_REDIS_DBS. So the default,
    db 15, gives gw0 db 15 and gw1 db 1; db 11 gives 11 and 13. Each worker empties its own
    before each test (the redis_url fixture)."""
    if worker is None:
        return url
    parts = urllib.parse.urlsplit(url)
    first = int(parts.path.strip("/") or 0)
    others = [db for db in ((first + step) % 16 for step in range(1, 16)) if db not in RESERVED_REDIS_DBS]
    index = int(worker.removeprefix("gw"))
    if index > len(others):
        raise RuntimeError(f"{index + 1} test workers, but Redis has only {len(others) + 1} databases to give them")
    db = first if index == 0 else others[index - 1]
    return urllib.parse.urlunsplit(parts._replace(path=f"/{db}"))


def fresh_postgres_schema(schema: str) -> str:
    """Empty `schema` in the test database and return a URL whose connections use it, so that
    runs never see each other's rows."""
    engine = sa.create_engine(POSTGRES_SERVER.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine.dispose()
    return f"{POSTGRES_SERVER}?options=-csearch_path%3D{schema}"


def migrated_postgres_schema(schema: str) -> str:
    """`schema` emptied and brought to this code's revision, as a URL. The first time in a run,
    Alembic migrates it (`flask db upgrade`, the real path) and pg_dump keeps what that made.
    After that, for the hundreds of tests that each need a fresh ledger on PostgreSQL:

    - while the schema's definition is still the template's (its fingerprint, read from the
      catalog, is unchanged), its tables are emptied and the template's rows and sequence values
      put back: a fraction of a replay's time;
    - when a test changed it (dropped a trigger, migrated from a legacy dump, dropped the
      schema), the dump is replayed in one statement, as before."""
    template = _TEMPLATES.get(schema)
    if template is None:
        url = migrated(fresh_postgres_schema(schema))
        _TEMPLATES[schema] = _template(schema)
        return url
    engine = sa.create_engine(POSTGRES_SERVER.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        if conn.exec_driver_sql(_FINGERPRINT, {"schema": schema}).scalar() == template.fingerprint:
            # Replica mode runs no trigger: the ledger's append-only ones refuse a DELETE, as they
            # should, and the foreign keys' would want the tables emptied in order. DELETE, not
            # TRUNCATE: on a test's few rows it takes milliseconds, TRUNCATE as long as the replay.
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            for table in template.tables:
                conn.exec_driver_sql(f"DELETE FROM {schema}.{table}")
            conn.exec_driver_sql(template.rows)  # the migrations' rows, and every sequence set back
        else:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.exec_driver_sql(template.dump)
    engine.dispose()
    return f"{POSTGRES_SERVER}?options=-csearch_path%3D{schema}"


@dataclass(frozen=True)
class _Template:
    dump: str  # the whole schema, to replay
    rows: str  # its rows and sequence values alone
    tables: tuple[str, ...]
    fingerprint: str  # of its definition, from _FINGERPRINT


_TEMPLATES: dict[str, _Template] = {}

# One hash of everything in a schema that a test may change and emptying its tables would not put back:
# its tables and columns, constraints, indexes, triggers (and whether enabled), functions, rules,
# row policies, types, sequences and privileges. A schema that is not there hashes to NULL.
_FINGERPRINT = """
SELECT md5(string_agg(item, E'\\n' ORDER BY item)) FROM (
  SELECT 'schema ' || coalesce(n.nspacl::text, '') AS item FROM pg_namespace n WHERE n.nspname = %(schema)s
  UNION ALL
  SELECT concat_ws(' ', 'relation', c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity, c.reloptions::text, c.relacl::text)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s
  UNION ALL
  SELECT concat_ws(' ', 'column', c.relname, row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum), a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   a.attidentity, a.attgenerated, pg_get_expr(d.adbin, d.adrelid), a.attacl::text)
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT concat_ws(' ', 'constraint', c.relname, k.conname, pg_get_constraintdef(k.oid), k.convalidated)
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s
  UNION ALL
  SELECT concat_ws(' ', 'index', pg_get_indexdef(i.indexrelid), i.indisvalid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s
  UNION ALL
  SELECT concat_ws(' ', 'trigger', pg_get_triggerdef(t.oid), t.tgenabled)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s
  UNION ALL
  SELECT concat_ws(' ', 'function', p.proname, p.prokind, pg_get_function_identity_arguments(p.oid), p.prosrc, p.proacl::text)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %(schema)s
  UNION ALL
  SELECT concat_ws(' ', 'rule', r.rulename, pg_get_ruledef(r.oid), r.ev_enabled)
  FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s
  UNION ALL
  SELECT concat_ws(' ', 'policy', c.relname, p.polname, p.polcmd, p.polpermissive, p.polroles::text,
                   pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s
  UNION ALL
  SELECT concat_ws(' ', 'type', t.typname, t.typtype) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = %(schema)s
  UNION ALL
  SELECT concat_ws(' ', 'sequence', c.relname, s.seqtypid, s.seqstart, s.seqincrement, s.seqmax, s.seqmin, s.seqcache, s.seqcycle)
  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s
) items
"""


def _template(schema: str) -> _Template:
    """What a migrated `schema` is, kept to make it again: dumps, tables and fingerprint."""
    engine = sa.create_engine(POSTGRES_SERVER.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        fingerprint = conn.exec_driver_sql(_FINGERPRINT, {"schema": schema}).scalar()
        tables = conn.exec_driver_sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = %(schema)s ORDER BY tablename", {"schema": schema}
        ).scalars().all()
    engine.dispose()
    return _Template(_dump(schema), _dump(schema, "--data-only"), tuple(tables), fingerprint)


def _dump(schema: str, *options: str) -> str:
    """The schema's tables, functions, triggers and rows as SQL (pg_dump's psql-only lines dropped)."""
    server = sa.engine.make_url(POSTGRES_SERVER)
    dumped = subprocess.run(
        ["pg_dump", "-h", server.host or "127.0.0.1", "-p", str(server.port or 5432), "-U", server.username or "postgres",
         "-d", server.database or "test", f"--schema={schema}", "--no-owner", "--no-privileges", "--inserts", *options],
        capture_output=True, text=True, check=True,
    ).stdout
    return "\n".join(line for line in dumped.splitlines() if not line.startswith("\\"))


def migrated(database_url: str) -> str:
    """Run `flask db upgrade` on the database at `database_url`, and return it."""
    engine = make_engine(database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return database_url


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(process: subprocess.Popen, port: int, log: Path, seconds: float = 60) -> None:
    """Wait until the app served on `port` answers /healthz with 200; fail with its log if it exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:  # not listening yet, or 503 while its database or Redis is not ready
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server did not answer /healthz within {seconds:.0f} s; log: {log}")


def stop_group(process: subprocess.Popen, seconds: float = 30) -> None:
    """SIGTERM a process started with start_new_session=True; SIGKILL its whole group if it lingers."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
