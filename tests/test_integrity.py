"""Integrity against someone who can write to the database (SPEC §5, R12): with the signing key
and the signed checkpoints kept outside it, `flask consent verify` names every forgery that the
bot's own database credentials allow, done here with raw SQL as such an attacker would."""
from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bot import create_app
from bot.outbound.worker import checkpoint_when_due
from bot.services import services_of
from bot.settings import ConfigError, Settings
from bot.storage.db import make_engine
from bot.storage.integrity import CheckpointError, LedgerKey, load_checkpoints, write_checkpoint
from bot.storage.ledger import Ledger, event_hash
from bot.storage.migrate import upgrade
from bot.storage.schema import consent_events, ledger_head
from tests.conftest import LEDGER_SIGNING_KEY, app_config, fresh_postgres_url
from tests.helpers import OTHER_USER, USER, opt_out, web_opt_in

GUARDS = {  # what an attacker with the database's credentials drops first
    "sqlite": ["DROP TRIGGER consent_events_no_update", "DROP TRIGGER consent_events_no_delete", "DROP TRIGGER consent_events_keyed_only"],
    "postgresql": [
        "DROP TRIGGER consent_events_append_only ON consent_events",
        "DROP TRIGGER consent_events_keyed_only ON consent_events",
        "DROP TRIGGER consent_events_no_truncate ON consent_events",
    ],
}


@pytest.fixture
def checkpoints(tmp_path) -> Path:
    return tmp_path / "checkpoints"


@pytest.fixture
def app(database_url, redis_url, graph, checkpoints):
    """The app, keeping its checkpoints in a directory of the test's own."""
    app = create_app(app_config(database_url, redis_url, graph, LEDGER_CHECKPOINTS=str(checkpoints)))
    yield app
    services_of(app).dispose()


@pytest.fixture
def checkpointed(runner, ledger, checkpoints) -> Ledger:
    """Five events, and a signed checkpoint of them written by `flask consent checkpoint`."""
    for n in range(1, 6):
        ledger.append(web_opt_in(USER if n % 2 else OTHER_USER, ref=f"form-{n}"))
    result = runner.invoke(args=["consent", "checkpoint"])
    assert result.exit_code == 0 and result.output.startswith("checkpoint of seq 5 written to "), result.output
    assert len(list(checkpoints.glob("*.json"))) == 1
    return ledger


@pytest.fixture
def unchecked(database_url, redis_url, graph):
    """`flask consent verify` of an app with no checkpoint directory: the chain and the key alone."""
    app = create_app(app_config(database_url, redis_url, graph))
    yield app.test_cli_runner()
    services_of(app).dispose()


@contextlib.contextmanager
def attacker(ledger: Ledger) -> Iterator[Connection]:
    """A transaction of someone with the bot's database credentials, who drops the guards first."""
    with ledger.engine.begin() as conn:
        for statement in GUARDS[conn.dialect.name]:
            conn.exec_driver_sql(statement)
        yield conn


def rows(conn: Connection, *where) -> list[dict]:
    return [dict(row) for row in conn.execute(sa.select(consent_events).where(*where).order_by(consent_events.c.seq)).mappings()]


def rechain(conn: Connection, events: list[dict], prev_hash: str) -> str:
    """Insert the events chained on from `prev_hash` with plain SHA-256, as the code before the key hashed; return the last hash."""
    for event in events:
        event.update(prev_hash=prev_hash, hash_version=2)
        event["hash"] = prev_hash = event_hash(event, b"")
        conn.execute(consent_events.insert().values(**event))
    return prev_hash


def move_head(conn: Connection, seq: int, head_hash: str) -> None:
    conn.execute(ledger_head.update().values(seq=seq, hash=head_hash))


def failed(runner, *args: str) -> str:
    """`flask consent verify` (with the configured checkpoints unless told otherwise): its one-line reason for exit 1."""
    result = runner.invoke(args=["consent", "verify", *args])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ledger verification FAILED") and result.output.count("\n") == 1, result.output
    return result.output


def test_an_untouched_ledger_verifies_against_its_checkpoint(runner, checkpointed):
    result = runner.invoke(args=["consent", "verify"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ledger OK: 5 event(s), hash chain intact; 1 signed checkpoint(s) agree, the newest of seq 5 at ")
    with checkpointed.engine.connect() as conn:
        assert {row["hash_version"] for row in rows(conn)} == {3}  # new events are keyed


@pytest.mark.parametrize("labelled", [2, 3], ids=["as-the-old-code-hashed", "labelled-keyed"])
def test_a_forged_append_with_the_head_moved_is_named_even_without_checkpoints(runner, unchecked, checkpointed, labelled):
    with attacker(checkpointed) as conn:
        last = rows(conn, consent_events.c.seq == 5)[0]
        forged = {
            **last, "seq": 6, "event_id": "forged-opt-in", "source_ref": "forged", "prev_hash": last["hash"], "hash_version": 2,
            "consent_text": "Yes, send me every offer", "scope": "marketing",
        }
        forged["hash"] = event_hash(forged, b"")
        conn.execute(consent_events.insert().values(**{**forged, "hash_version": labelled}))
        move_head(conn, 6, forged["hash"])
    assert "event seq 6 (forged-opt-in) was forged without the signing key" in failed(runner)
    assert "event seq 6 (forged-opt-in) was forged without the signing key" in failed(unchecked)


def test_a_cut_tail_with_the_head_moved_back_is_named_by_the_checkpoint(runner, unchecked, checkpointed):
    with attacker(checkpointed) as conn:
        conn.execute(consent_events.delete().where(consent_events.c.seq > 3))
        move_head(conn, 3, rows(conn, consent_events.c.seq == 3)[0]["hash"])
    output = failed(runner)
    assert "the ledger ends at seq 3 but the signed checkpoint of " in output and "records 5 event(s): events were cut from the end" in output
    assert unchecked.invoke(args=["consent", "verify"]).exit_code == 0  # the chain alone is consistent: only the checkpoint knows


def test_a_checkpoint_directory_without_checkpoints_is_no_check(runner, tmp_path):
    result = runner.invoke(args=["consent", "verify", "--checkpoints", str(tmp_path)])
    assert result.exit_code == 2 and "Invalid value for --checkpoints: holds no checkpoint (*.json)" in result.output


def test_deleted_events_are_named(runner, checkpointed):
    with attacker(checkpointed) as conn:
        conn.execute(consent_events.delete().where(consent_events.c.seq.in_([2, 3])))
    assert "event seq 2 is missing (next found: seq 4): events were deleted" in failed(runner)


def test_a_deletion_then_re_chaining_is_named(runner, checkpointed):
    with attacker(checkpointed) as conn:
        kept = rows(conn, consent_events.c.seq > 3)
        conn.execute(consent_events.delete().where(consent_events.c.seq >= 3))
        for event in kept:
            event["seq"] -= 1
        move_head(conn, 4, rechain(conn, kept, rows(conn, consent_events.c.seq == 2)[0]["hash"]))
    output = failed(runner)
    assert "event seq 3 (" in output and "and the events after it were re-chained after a deletion" in output


def test_an_edited_event_is_named(runner, checkpointed):
    with attacker(checkpointed) as conn:
        conn.execute(consent_events.update().where(consent_events.c.seq == 3).values(consent_text="Yes, send me every offer"))
    assert "event seq 3 (" in (output := failed(runner)) and "was altered: its content does not match its keyed hash" in output


def test_truncating_is_refused_on_postgresql_and_named_once_done(runner, checkpointed):
    if checkpointed.engine.dialect.name == "postgresql":
        with pytest.raises(sa.exc.DatabaseError, match="append-only"), checkpointed.engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE consent_events")
        assert runner.invoke(args=["consent", "verify"]).exit_code == 0
    with attacker(checkpointed) as conn:  # SQLite has no TRUNCATE: an unqualified DELETE is its own
        conn.exec_driver_sql("TRUNCATE consent_events" if conn.dialect.name == "postgresql" else "DELETE FROM consent_events")
        move_head(conn, 0, "0" * 64)
    assert "the ledger is empty but the signed checkpoint of " in (output := failed(runner))
    assert "records 5 event(s): the table was truncated" in output


@pytest.mark.parametrize(
    "tamper, named",
    [
        (lambda raw, key: {**raw, "seq": raw["seq"] + 1}, "has a bad signature: it was changed after it was signed"),
        (lambda raw, key: {**raw, "head_hash": "f" * 64}, "has a bad signature: it was changed after it was signed"),
        (lambda raw, key: {**raw, "signature": "00" * 64}, "has a bad signature: it was changed after it was signed"),
        (lambda raw, key: json.loads(key.checkpoint(raw["seq"], raw["head_hash"], datetime.fromisoformat(raw["at"])).to_json()), "was signed with another key"),
        (lambda raw, key: {"seq": "many"}, "cannot be read"),
    ],
    ids=["seq", "head-hash", "signature", "other-key", "not-a-checkpoint"],
)
def test_a_checkpoint_that_was_tampered_with_is_named(runner, checkpointed, checkpoints, tamper, named):
    path = next(checkpoints.glob("*.json"))
    other = LedgerKey("someone-else's-ledger-signing-key-0123456789")
    path.write_text(json.dumps(tamper(json.loads(path.read_text()), other)))
    output = failed(runner)
    assert output.startswith(f"Error: ledger verification FAILED: checkpoint {path.name} ") and named in output, output


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_dialect(request) -> str:
    return request.param


def test_a_ledger_written_before_the_key_still_verifies_and_no_unkeyed_event_follows(
    request, tmp_path, redis_url, graph, checkpoints, monkeypatch, database_dialect
):
    url = f"sqlite:///{tmp_path / 'before.db'}" if database_dialect == "sqlite" else fresh_postgres_url()
    engine = make_engine(url)
    upgrade(engine, "0005")
    before = Ledger(engine, key=LedgerKey(LEDGER_SIGNING_KEY))
    with monkeypatch.context() as old_code:  # as the code before the key wrote: hash version 2
        old_code.setattr("bot.storage.ledger.HASH_VERSION", 2)
        before.append(web_opt_in(ref="form-old"))
        before.append(opt_out(ref="stop-old"))
    upgrade(engine)
    app = create_app(app_config(url, redis_url, graph, LEDGER_CHECKPOINTS=str(checkpoints)))
    request.addfinalizer(services_of(app).dispose)
    request.addfinalizer(engine.dispose)
    runner = app.test_cli_runner()
    services_of(app).ledger.append(web_opt_in(OTHER_USER, ref="form-new"))
    assert runner.invoke(args=["consent", "checkpoint"]).exit_code == 0
    result = runner.invoke(args=["consent", "verify"])
    assert result.exit_code == 0 and result.output.startswith("ledger OK: 3 event(s), hash chain intact; 1 signed checkpoint(s)"), result.output
    with engine.connect() as conn:
        assert [row["hash_version"] for row in rows(conn)] == [2, 2, 3]
    with monkeypatch.context() as old_code, pytest.raises(sa.exc.DatabaseError, match=r"keyed \(version 3\) events only"):
        old_code.setattr("bot.storage.ledger.HASH_VERSION", 2)  # an older process still running after the upgrade
        before.append(opt_out(OTHER_USER, ref="stop-late"))


def test_the_scheduled_checkpoint_is_written_once_a_period_across_workers_and_only_when_the_head_moved(
    ledger, redis_url, checkpoints
):
    ledger.append(web_opt_in())
    workers = [redis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)]
    where = str(checkpoints)
    assert checkpoint_when_due(ledger, where, workers[0], every=1) is not None
    assert checkpoint_when_due(ledger, where, workers[1], every=1) is None  # the same period
    assert len(list(checkpoints.glob("*.json"))) == 1
    time.sleep(1.1)  # the period is over
    assert checkpoint_when_due(ledger, where, workers[1], every=1) is None  # but the head has not moved
    time.sleep(1.1)
    ledger.append(opt_out())
    made = checkpoint_when_due(ledger, where, workers[1], every=1)
    assert made is not None and made.seq == 2 and len(list(checkpoints.glob("*.json"))) == 2
    assert ledger.verify(load_checkpoints(checkpoints, ledger.key)).ok
    for connection in workers:
        connection.close()


class _Store(http.server.BaseHTTPRequestHandler):
    """An object store that keeps what is PUT, once per name, as write-once storage does."""

    kept: dict[str, tuple[bytes, str | None]] = {}

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        exists = self.path in self.kept
        if not exists:
            self.kept[self.path] = (body, self.headers.get("If-None-Match"))
        self.send_response(412 if exists else 201)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def store() -> Iterator[str]:
    _Store.kept = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Store)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ledger-checkpoints/"
    server.shutdown()
    server.server_close()


def test_checkpoints_can_go_to_write_once_storage_over_http(ledger, store, tmp_path, redis_url, graph, database_url):
    app = create_app(app_config(database_url, redis_url, graph, LEDGER_CHECKPOINTS=store))
    runner = app.test_cli_runner()
    ledger.append(web_opt_in())
    result = runner.invoke(args=["consent", "checkpoint"])
    assert result.exit_code == 0 and result.output.startswith(f"checkpoint of seq 1 written to {store}ledger-000000000001-"), result.output
    [(path, (body, condition))] = _Store.kept.items()
    assert path.startswith("/ledger-checkpoints/ledger-000000000001-") and path.endswith(".json") and condition == "*"
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / Path(path).name).write_bytes(body)
    result = runner.invoke(args=["consent", "verify", "--checkpoints", str(copy)])
    assert result.exit_code == 0 and "1 signed checkpoint(s) agree, the newest of seq 1" in result.output, result.output
    services_of(app).dispose()


def test_a_checkpoint_never_replaces_another(ledger, store, checkpoints):
    made = ledger.key.checkpoint(*ledger.head(), ledger.clock())
    for where in (store, str(checkpoints)):
        write_checkpoint(made, where)
        with pytest.raises(CheckpointError, match=f"cannot write checkpoint .+{made.name}: (HTTP 412|File exists)"):
            write_checkpoint(made, where)
    assert len(_Store.kept) == 1 and len(list(checkpoints.glob("*.json"))) == 1


@pytest.mark.parametrize(
    "env, message",
    [
        ({"LEDGER_SIGNING_KEY": "short"}, "LEDGER_SIGNING_KEY must be at least 32 characters"),
        ({"LEDGER_SIGNING_KEY": "/no/such/key-file"}, r"LEDGER_SIGNING_KEY starts like a path \(/, ./, ../ or ~\) but names no readable file \(No such file or directory\)"),
        ({"LEDGER_CHECKPOINTS": "s3://me:s3cret@bucket/checkpoints"}, r"LEDGER_CHECKPOINTS must be a directory or an http:// or https:// URL .+'s3://me:\*\*\*@bucket"),
        ({"LEDGER_CHECKPOINT_SECONDS": "hourly"}, "LEDGER_CHECKPOINT_SECONDS must be a whole number"),
    ],
)
def test_bad_integrity_settings_fail_with_one_line(env, message):
    with pytest.raises(ConfigError, match=message) as refused:
        Settings.from_env(env)
    assert "\n" not in str(refused.value) and "s3cret" not in str(refused.value) and "short" not in str(refused.value)


def test_the_signing_key_may_be_a_file_and_the_same_key_signs_the_same(tmp_path):
    (tmp_path / "ledger.key").write_text(LEDGER_SIGNING_KEY + "\n")
    from_file = Settings.from_env({"LEDGER_SIGNING_KEY": str(tmp_path / "ledger.key")}).ledger_signing_key
    assert from_file == LEDGER_SIGNING_KEY
    assert LedgerKey(from_file).public_key == LedgerKey(LEDGER_SIGNING_KEY).public_key != LedgerKey(LEDGER_SIGNING_KEY + "x").public_key
    assert Settings.from_env({}).ledger_checkpoints.endswith("instance/checkpoints")
    assert Settings.from_env({}).ledger_checkpoint_seconds == 3600
