"""Shared fixtures: every ledger-backed test runs against SQLite and the real PostgreSQL."""
from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from bot import create_app
from bot.services import services_of
from bot.storage.ledger import Ledger
from sandbox.graph_imitation import GraphImitation
from tests.local_services import (
    XDIST_WORKER,
    fresh_postgres_schema,
    migrated,
    migrated_postgres_schema,
    postgres_schema_of_worker,
    redis_url_of_worker,
)

pytest_plugins = ("tests.browser", "tests.receiver")  # the headless Chromium fixtures, for page tests; a forwarding receiver

BUSINESS = "Acme Bakery"
# Two checkouts can run their suites at once on one machine by giving each its own of these; the
# suite's parallel workers (pytest-xdist) each take their own from them (tests/local_services.py).
TEST_REDIS_URL = redis_url_of_worker(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"), XDIST_WORKER)
TEST_POSTGRES_SCHEMA = postgres_schema_of_worker(os.environ.get("TEST_POSTGRES_SCHEMA", "bot_test"), XDIST_WORKER)
PHONE_NUMBER_ID = "106540352242922"
APP_SECRET = "test-app-secret"
VERIFY_TOKEN = "test-verify-token"
ADMIN_TOKEN = "test-admin-token"
LEDGER_SIGNING_KEY = "test-ledger-signing-key-0123456789abcdef"
# Not instance/checkpoints, which holds the local run's: a test that keeps checkpoints gives a
# directory of its own, and any other write fails, as nothing listens there.
NO_CHECKPOINTS = "http://127.0.0.1:1/checkpoints"


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
    """An empty schema in the test database, not migrated."""
    return fresh_postgres_schema(TEST_POSTGRES_SCHEMA)


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory) -> Path:
    """A SQLite ledger at this code's schema revision, made once and copied for each test."""
    path = tmp_path_factory.mktemp("template") / "ledger.db"
    migrated(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path, migrated_sqlite_file) -> str:
    """A database at this code's schema revision (`flask db upgrade` run), empty."""
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"
        shutil.copyfile(migrated_sqlite_file, path)
        return f"sqlite:///{path}"
    return migrated_postgres_schema(TEST_POSTGRES_SCHEMA)


@pytest.fixture
def redis_url() -> str:
    """A Redis database of the tests' own, emptied before each test."""
    connection = redis.Redis.from_url(TEST_REDIS_URL)
    connection.flushdb()
    connection.close()
    return TEST_REDIS_URL


@pytest.fixture
def graph():
    """The Graph API imitation the app sends to."""
    imitation = GraphImitation().start()
    yield imitation
    imitation.stop()


def app_config(database_url: str, redis_url: str, graph: GraphImitation, **extra) -> dict:
    return {
        "TESTING": True, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "BUSINESS_NAME": BUSINESS,
        "GRAPH_API_URL": graph.url, "WHATSAPP_TOKEN": "test-token", "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
        "WHATSAPP_APP_SECRET": APP_SECRET, "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN, "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "SECRET_KEY": "test-secret-key", "LEDGER_SIGNING_KEY": LEDGER_SIGNING_KEY, "LEDGER_CHECKPOINTS": NO_CHECKPOINTS,
        **extra,
    }


@pytest.fixture
def app(database_url, redis_url, graph):
    app = create_app(app_config(database_url, redis_url, graph))
    yield app
    services_of(app).dispose()


@pytest.fixture
def app_without_redis(database_url, graph):
    """The same app while Redis is down: nothing listens at its REDIS_URL."""
    app = create_app(app_config(database_url, "redis://127.0.0.1:1/0", graph))
    yield app
    services_of(app).dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 24, 12, 0, tzinfo=UTC))


@pytest.fixture
def ledger(app, clock) -> Ledger:
    """The app's ledger database, with a clock the test controls."""
    return Ledger(services_of(app).ledger.engine, key=services_of(app).ledger.key, clock=clock)


# Markers from the fixtures a test uses, so that `-m unit` selects the tests that need no service.
_SERVICE_FIXTURES = {"redis_url": "redis", "chromium": "browser", "browser_page": "browser"}
_SERVICE_MARKERS = ("postgres", "redis", "browser", "processes")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the xdist_group marks set here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for fixture, marker in _SERVICE_FIXTURES.items():
            if fixture in fixtures:
                item.add_marker(marker)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("database_url") == "postgresql":
            item.add_marker("postgres")
        if not any(item.get_closest_marker(marker) for marker in _SERVICE_MARKERS):
            item.add_marker("unit")
        # In a parallel run (`python3 dev.py test`), the tests that start the bot's processes take
        # turns in one worker: two of them at once, each a few processes sending, pacing and
        # timing out on a 2-core machine, would starve each other's timing. The browser tests share
        # one worker's Chromium.
        if item.get_closest_marker("processes"):
            item.add_marker(pytest.mark.xdist_group("processes"))
        elif item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.xdist_group("browser"))
