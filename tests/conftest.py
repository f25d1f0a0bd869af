"""Shared fixtures: every ledger-backed test runs against SQLite and the real PostgreSQL."""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from bot import create_app
from bot.ledger import Ledger

POSTGRES_SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TEST_SCHEMA = "bot_test"
BUSINESS = "Acme Bakery"


class FakeClock:
    """A clock tests move by hand, so that windows and timestamps are exact."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def fresh_postgres_url() -> str:
    """An empty schema of its own in the test database, so runs never see each other's rows."""
    engine = sa.create_engine(POSTGRES_SERVER.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {TEST_SCHEMA} CASCADE")
        conn.exec_driver_sql(f"CREATE SCHEMA {TEST_SCHEMA}")
    engine.dispose()
    return f"{POSTGRES_SERVER}?options=-csearch_path%3D{TEST_SCHEMA}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return fresh_postgres_url()


@pytest.fixture
def app(database_url):
    app = create_app({"TESTING": True, "DATABASE_URL": database_url, "BUSINESS_NAME": BUSINESS})
    yield app
    app.extensions["ledger"].engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc))


@pytest.fixture
def ledger(app, clock) -> Ledger:
    """The app's ledger database, with a clock the test controls."""
    return Ledger(app.extensions["ledger"].engine, clock=clock)
