"""Schema migrations: `flask db upgrade` adopts a database made before migrations without changing
an event, builds an empty one to exactly the code's schema, and a process refuses to start on a
schema that is not the code's."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bot import create_app
from bot.domain.identity import legacy_person_id
from bot.services import services_of
from bot.settings import PROJECT_ROOT
from bot.storage.db import make_engine
from bot.storage.migrate import SchemaNotCurrent, head_revision, require_current, upgrade
from bot.storage.schema import consent_events, metadata
from tests.conftest import TEST_POSTGRES_SCHEMA, TEST_REDIS_URL, app_config
from tests.helpers import opt_out
from tests.local_services import POSTGRES_SERVER

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


def legacy_database(dialect: str, tmp_path: Path) -> str:
    """A database as the code before migrations left it, loaded from its dump."""
    if dialect == "sqlite":
        path = tmp_path / "legacy.db"
        with sa.create_engine(f"sqlite:///{path}").connect() as conn:
            conn.connection.dbapi_connection.executescript((LEGACY / "sqlite.sql").read_text())
        return f"sqlite:///{path}"
    server = POSTGRES_SERVER.replace("+psycopg", "")
    engine = sa.create_engine(POSTGRES_SERVER)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {TEST_POSTGRES_SCHEMA} CASCADE")
    engine.dispose()
    dump = (LEGACY / "postgresql.sql").read_text().replace("legacy_fixture", TEST_POSTGRES_SCHEMA)
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", server], input=dump, text=True, check=True, capture_output=True)
    return f"{POSTGRES_SERVER}?options=-csearch_path%3D{TEST_POSTGRES_SCHEMA}"


def event_rows(engine: sa.Engine) -> list[tuple]:
    """Every event's recorded fields, before (`wa_id`) or after (`identifier`) revision 0004."""
    with engine.connect() as conn:
        who = "identifier" if "identifier" in {c["name"] for c in sa.inspect(conn).get_columns("consent_events")} else "wa_id"
        fields = f"seq, event_id, {who}, action, scope, basis, channel, consent_text, evidence, source_ref, occurred_at, recorded_at, recorded_by, prev_hash, hash"
        return [tuple(row) for row in conn.execute(sa.text(f"SELECT {fields} FROM consent_events ORDER BY seq"))]


@pytest.mark.postgres
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_database_made_before_migrations_is_adopted_and_keeps_every_event(dialect, tmp_path, redis_url, graph):
    url = legacy_database(dialect, tmp_path)
    engine = make_engine(url)
    before = event_rows(engine)
    with pytest.raises(SchemaNotCurrent, match="has no schema for this version: run `flask db upgrade`"):
        require_current(engine)

    app = create_app(app_config(url, redis_url, graph))
    runner = app.test_cli_runner()
    first, second = runner.invoke(args=["db", "upgrade"]), runner.invoke(args=["db", "upgrade"])
    assert first.exit_code == 0 and first.output == f"database schema at {head_revision()} (was none)\n"
    assert second.exit_code == 0 and second.output == f"database schema at {head_revision()}\n"

    assert event_rows(engine) == before and len(before) == 19
    verify = runner.invoke(args=["consent", "verify"])
    assert verify.exit_code == 0 and "19 event(s), hash chain intact" in verify.output
    ledger = services_of(app).ledger
    expected = json.loads((LEGACY / "states.json").read_text())
    found = {}
    for wa_id in expected:
        state = ledger.state(wa_id)
        found[wa_id] = {"state": state.state.value, "marketing": state.marketing.value, "events": len(ledger.history(wa_id))}
    assert found == expected
    for wa_id in expected:  # each number became a person known by it
        assert (ledger.state(wa_id).person_id, ledger.state(wa_id).identifiers) == (legacy_person_id(wa_id), (wa_id,))
    # The adopted ledger goes on: new events chain onto the old ones, and stay append-only.
    ledger.append(opt_out(wa_id="919876543210", ref="wamid.after-upgrade"))
    assert ledger.state("919876543210").state.value == "opted_out" and ledger.verify().ok
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), engine.begin() as conn:
        conn.execute(consent_events.delete())
    services_of(app).dispose()
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_an_empty_database_is_built_to_exactly_the_codes_schema(dialect, tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}" if dialect == "sqlite" else legacy_database("postgresql", tmp_path)
    if dialect == "postgresql":  # the same schema, emptied
        with sa.create_engine(POSTGRES_SERVER).begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {TEST_POSTGRES_SCHEMA} CASCADE; CREATE SCHEMA {TEST_POSTGRES_SCHEMA}")
    engine = make_engine(url)
    assert upgrade(engine) == (None, head_revision())
    require_current(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        assert conn.execute(sa.text("SELECT seq, hash FROM ledger_head")).all() == [(0, "0" * 64)]
    engine.dispose()


def test_a_database_behind_the_code_names_the_upgrade(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'behind.db'}")
    upgrade(engine, "0001")
    with pytest.raises(SchemaNotCurrent, match=f"is at schema revision 0001, this code needs {head_revision()}: run `flask db upgrade`"):
        require_current(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaNotCurrent, match="revision 9999, which this code does not know"):
        require_current(engine)
    engine.dispose()


@pytest.mark.processes
@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "bot.outbound.worker"],
        [sys.executable, "-m", "gunicorn", "wsgi:app", "--bind", "127.0.0.1:0"],
        [sys.executable, "-m", "flask", "--app", "wsgi", "consent", "verify"],
    ],
    ids=["worker", "web", "cli"],
)
def test_no_process_starts_on_a_schema_behind_the_code(tmp_path, command):
    database = tmp_path / "behind.db"
    engine = make_engine(f"sqlite:///{database}")
    upgrade(engine, "0001")
    engine.dispose()
    env = {"PATH": "", "DATABASE_URL": f"sqlite:///{database}", "REDIS_URL": TEST_REDIS_URL}
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    *before, reason = result.stderr.splitlines()  # gunicorn says it is starting before its hook runs
    assert len(before) == (1 if "gunicorn" in command else 0), result.stderr
    assert reason.lower().startswith("error: the database ") and reason.endswith(f"is at schema revision 0001, this code needs {head_revision()}: run `flask db upgrade`")


def test_a_hash_version_the_code_does_not_know_is_reported_not_trusted(ledger):
    ledger.append(opt_out())
    with ledger.engine.begin() as conn:
        row = dict(conn.execute(sa.select(consent_events)).mappings().one())
        conn.execute(consent_events.insert().values({**row, "seq": 2, "event_id": "e2", "source_ref": "r2", "prev_hash": row["hash"], "hash_version": 7}))
        conn.execute(sa.text("UPDATE ledger_head SET seq = 2"))
    result = ledger.verify()
    assert not result.ok and "has hash version 7, which this code does not know" in result.problem


def test_a_table_that_is_not_ours_stops_the_upgrade_in_one_line_and_changes_nothing(tmp_path, redis_url, graph):
    path = tmp_path / "foreign.db"
    with sa.create_engine(f"sqlite:///{path}").begin() as conn:
        conn.exec_driver_sql("CREATE TABLE contacts (wa_id VARCHAR(15) PRIMARY KEY)")  # no last_inbound_at
    app = create_app(app_config(f"sqlite:///{path}", redis_url, graph))
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 1
    assert result.output == "Error: the schema upgrade stopped: table contacts lacks last_inbound_at: this database is not one this bot made\n"
    with sa.create_engine(f"sqlite:///{path}").connect() as conn:
        assert sa.inspect(conn).get_table_names() == ["contacts"]  # the upgrade was one transaction
    services_of(app).dispose()


def test_an_unreachable_database_stops_the_upgrade_in_one_line(redis_url, graph):
    app = create_app(app_config("postgresql://postgres@127.0.0.1:1/test", redis_url, graph))
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot open the ledger database postgresql+psycopg://postgres@127.0.0.1:1/test: ")
    assert result.output.count("\n") == 1


@pytest.mark.postgres
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_rows_kept_twice_before_0003_stay_and_the_first_becomes_the_one(dialect, tmp_path):
    url = f"sqlite:///{tmp_path / 'unread.db'}" if dialect == "sqlite" else legacy_database("postgresql", tmp_path)
    if dialect == "postgresql":
        with sa.create_engine(POSTGRES_SERVER).begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {TEST_POSTGRES_SCHEMA} CASCADE; CREATE SCHEMA {TEST_POSTGRES_SCHEMA}")
    engine = make_engine(url)
    upgrade(engine, "0002")
    rows = [("body is not JSON", "{"), ("body is not JSON", "{"), ("field 'calls' is not handled", "{}")]
    notices = [('{"event": "FLAGGED", "b": 1}', "FLAGGED"), ('{"b": 1, "event": "FLAGGED"}', "FLAGGED"), ('{"event": "UNFLAGGED"}', "UNFLAGGED")]
    with engine.begin() as conn:
        for reason, raw in rows:
            conn.execute(sa.text("INSERT INTO unread_webhooks (received_at, reason, raw) VALUES (CURRENT_TIMESTAMP, :r, :w)"), {"r": reason, "w": raw})
        for details, event in notices:
            conn.execute(
                sa.text("INSERT INTO account_notices (received_at, field, event, details) VALUES (CURRENT_TIMESTAMP, 'phone_number_quality_update', :e, :d)"),
                {"e": event, "d": details},
            )
    upgrade(engine)
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT reason, digest IS NOT NULL FROM unread_webhooks ORDER BY id")).all()
        kept_notices = conn.execute(sa.text("SELECT event, digest IS NOT NULL FROM account_notices ORDER BY id")).all()
    assert kept == [("body is not JSON", True), ("body is not JSON", False), ("field 'calls' is not handled", True)]
    assert kept_notices == [("FLAGGED", True), ("FLAGGED", False), ("UNFLAGGED", True)]  # the same JSON, keys in another order
    engine.dispose()
