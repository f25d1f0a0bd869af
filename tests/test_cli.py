"""`flask consent show|export|verify` and `flask keywords check`, including tampering with the stored ledger."""
from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from bot import create_app
from bot.services import services_of
from bot.settings import PROJECT_ROOT
from bot.storage.ledger import Ledger, event_hash
from bot.storage.schema import consent_events
from tests.conftest import app_config
from tests.helpers import OTHER_USER, USER, opt_out, web_opt_in
from tests.local_services import migrated


def tamper(ledger: Ledger, *statements: str) -> None:
    """Act as someone with direct database access: drop the append-only guard, then edit."""
    with ledger.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("DROP TRIGGER consent_events_append_only ON consent_events")
        else:
            conn.exec_driver_sql("DROP TRIGGER consent_events_no_update")
            conn.exec_driver_sql("DROP TRIGGER consent_events_no_delete")
        for statement in statements:
            conn.exec_driver_sql(statement)


@pytest.fixture
def five_events(ledger):
    for n in range(1, 6):
        ledger.append(web_opt_in(USER if n % 2 else OTHER_USER, ref=f"form-{n}"))
    return ledger


def test_verify_passes_on_an_untouched_ledger(runner, five_events):
    result = runner.invoke(args=["consent", "verify"])
    assert result.exit_code == 0
    assert result.output == "ledger OK: 5 event(s), hash chain intact; no signed checkpoint to hold it against\n"


@pytest.mark.parametrize(
    "statements, named",
    [
        (["UPDATE consent_events SET consent_text = 'I agree to everything' WHERE seq = 3"], "event seq 3 (.+) was altered"),
        (["UPDATE consent_events SET identifier = '19995550000' WHERE seq = 2"], "event seq 2 (.+) was altered"),
        (["DELETE FROM consent_events WHERE seq = 3"], "event seq 3 is missing"),
        (
            [
                "UPDATE consent_events SET seq = -2 WHERE seq = 2",
                "UPDATE consent_events SET seq = 2 WHERE seq = 4",
                "UPDATE consent_events SET seq = 4 WHERE seq = -2",
            ],
            r"event seq 2 (.+) does not follow seq 1",
        ),
        (["DELETE FROM consent_events WHERE seq = 5"], "head records 5 events but only 4 chain up to it"),
    ],
    ids=["edit-text", "edit-user", "delete", "swap", "truncate"],
)
def test_verify_names_the_first_tampered_event(runner, five_events, statements, named):
    tamper(five_events, *statements)
    result = runner.invoke(args=["consent", "verify"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ledger verification FAILED")
    assert result.output.count("\n") == 1
    assert re.search(named, result.output), result.output


def test_verify_catches_a_well_hashed_event_added_behind_the_apps_back(runner, five_events):
    """Even someone who holds the key cannot append without the head noticing."""
    with five_events.engine.begin() as conn:
        last = dict(conn.execute(sa.select(consent_events).where(consent_events.c.seq == 5)).mappings().one())
        forged = {**last, "seq": 6, "event_id": "forged", "source_ref": "forged", "prev_hash": last["hash"]}
        forged["hash"] = event_hash(forged, five_events.key.chain)  # even with the key
        conn.execute(consent_events.insert().values(**forged))
    result = runner.invoke(args=["consent", "verify"])
    assert result.exit_code == 1
    assert "events after seq 5 are not covered by the ledger head" in result.output


def test_show_prints_state_and_history(runner, ledger):
    ledger.append(web_opt_in())
    ledger.append(opt_out(ref="wamid.STOP"))
    result = runner.invoke(args=["consent", "show", "+1 (650) 555-1234"])
    assert result.exit_code == 0
    assert "state:        opted_out" in result.output
    assert "marketing:    opted_out" in result.output
    assert "history:      2 event(s)" in result.output
    assert "ref wamid.STOP" in result.output
    assert f"wa_id:        {USER}" in result.output


def test_show_refuses_a_malformed_number(runner):
    result = runner.invoke(args=["consent", "show", "12-ab"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: invalid phone number") and result.output.count("\n") == 1


def test_export_jsonl_holds_every_event_with_evidence(runner, five_events, tmp_path):
    target = tmp_path / "audit.jsonl"
    result = runner.invoke(args=["consent", "export", "--format", "jsonl", "-o", str(target)])
    assert result.exit_code == 0
    rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [row["seq"] for row in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["evidence"] == {"form": "signup", "ip": "203.0.113.9"}
    assert rows[1]["prev_hash"] == rows[0]["hash"]


def test_export_csv_filters_by_user_and_neutralises_formulas(runner, ledger):
    ledger.append(web_opt_in(ref="=HYPERLINK(\"http://evil\")"))
    ledger.append(web_opt_in(OTHER_USER, ref="other"))
    result = runner.invoke(args=["consent", "export", "--wa-id", USER])
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 1 and rows[0]["wa_id"] == USER
    assert rows[0]["source_ref"] == "'=HYPERLINK(\"http://evil\")"
    assert json.loads(rows[0]["evidence"]) == {"form": "signup", "ip": "203.0.113.9"}


@pytest.fixture
def three_days(ledger):
    """One opt-in at 08:00 UTC on each of 20, 21 and 22 November 2026."""
    for day in (20, 21, 22):
        ledger.append(web_opt_in(ref=f"form-{day}", occurred_at=datetime(2026, 11, day, 8, tzinfo=UTC)))
    return ledger


@pytest.mark.parametrize(
    "window,refs",
    [
        (["--since", "2026-11-21T09:00:00+01:00"], ["form-21", "form-22"]),
        (["--since", "2026-11-21T08:00:00Z"], ["form-21", "form-22"]),
        (["--since", "2026-11-21T08:00:00"], ["form-21", "form-22"]),  # no zone: UTC
        (["--until", "2026-11-22T10:00:00+02:00"], ["form-20", "form-21"]),
        (["--since", "2026-11-21T03:00:00-05:00", "--until", "2026-11-22"], ["form-21"]),
    ],
)
def test_export_since_and_until_take_iso_times_with_or_without_a_zone(runner, three_days, window, refs):
    result = runner.invoke(args=["consent", "export", "--format", "jsonl", *window])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["source_ref"] for line in result.output.splitlines()] == refs


@pytest.mark.parametrize(
    "value,says",
    [("yesterday", "'yesterday' is not an ISO 8601 date-time"), ("0001-01-01T00:00:00+14:00", "must fall in the years 1900 to 9999 (UTC)")],
)
def test_export_refuses_a_bad_time_with_its_reason(runner, value, says):
    result = runner.invoke(args=["consent", "export", "--since", value])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == f"Error: Invalid value for '--since': {says}"


def test_export_to_an_unwritable_place_fails_cleanly(runner, five_events, tmp_path):
    result = runner.invoke(args=["consent", "export", "-o", str(tmp_path / "missing-dir" / "audit.csv")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot write") and result.output.count("\n") == 1


@pytest.mark.processes
def test_export_to_a_reader_that_stops_early_ends_quietly(tmp_path, redis_url, graph):
    """`flask consent export | head -1`: no traceback, no complaint, and a success for the shell."""
    config = app_config(migrated(f"sqlite:///{tmp_path / 'ledger.db'}"), redis_url, graph)
    app = create_app(config)
    services_of(app).ledger.append_many([web_opt_in(f"1650555{n:04d}", ref=f"form-{n}") for n in range(500)])  # ~300 KB of CSV
    services_of(app).dispose()
    env = {"PATH": "", **{name: str(value) for name, value in config.items()}}
    export = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "consent", "export"], cwd=PROJECT_ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert export.stdout.readline().startswith("seq,event_id,")
    export.stdout.close()  # as head does once it has its line
    assert export.wait(timeout=60) == 0
    assert export.stderr.read() == ""


def test_keywords_check_lists_languages(runner):
    result = runner.invoke(args=["keywords", "check"])
    assert result.exit_code == 0
    for language in ("en:", "es:", "pt:", "hi:"):
        assert language in result.output
