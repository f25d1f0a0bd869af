"""The local PostgreSQL and free ports, shared by the tests and the benchmarks."""
from __future__ import annotations

import os
import socket

import sqlalchemy as sa

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
