"""The local PostgreSQL and free ports, shared by the tests and the benchmarks."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import sqlalchemy as sa

from bot.storage.db import make_engine
from bot.storage.migrate import upgrade

POSTGRES_SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


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
    Alembic migrates it (`flask db upgrade`, the real path) and pg_dump keeps what that made;
    after that the dump is replayed in one statement: a fraction of the migrations' time, for
    the hundreds of tests that each need a fresh ledger on PostgreSQL."""
    if schema not in _SCHEMA_DUMPS:
        url = migrated(fresh_postgres_schema(schema))
        _SCHEMA_DUMPS[schema] = _dump(schema)
        return url
    engine = sa.create_engine(POSTGRES_SERVER.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.exec_driver_sql(_SCHEMA_DUMPS[schema])
    engine.dispose()
    return f"{POSTGRES_SERVER}?options=-csearch_path%3D{schema}"


_SCHEMA_DUMPS: dict[str, str] = {}


def _dump(schema: str) -> str:
    """The schema's tables, functions, triggers and rows as SQL (pg_dump's psql-only lines dropped)."""
    server = sa.engine.make_url(POSTGRES_SERVER)
    dumped = subprocess.run(
        ["pg_dump", "-h", server.host or "127.0.0.1", "-p", str(server.port or 5432), "-U", server.username or "postgres",
         "-d", server.database or "test", f"--schema={schema}", "--no-owner", "--no-privileges", "--inserts"],
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
