"""The consent ledger, against SQLite and PostgreSQL: recording, idempotency, derived state, integrity."""
from __future__ import annotations

import multiprocessing
import sqlite3
from dataclasses import replace
from datetime import timedelta

import pytest
import sqlalchemy as sa

from bot.domain.consent import Action, Basis, Channel, EventDraft, InvalidEvent, Marketing, Scope, State
from bot.storage.db import _switch_to_wal, make_engine
from bot.storage.integrity import LedgerKey
from bot.storage.ledger import Ledger, SourceRefConflict
from bot.storage.schema import consent_events
from tests.conftest import LEDGER_SIGNING_KEY
from tests.helpers import OTHER_USER, USER, keyword_opt_in, notice_given, opt_out, web_opt_in


def count_events(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(consent_events)).scalar_one()


def test_opt_in_is_recorded_with_evidence_basis_and_chain(ledger, clock):
    event = ledger.append(web_opt_in())
    assert (event.seq, event.action, event.basis, event.channel) == (1, Action.OPT_IN, Basis.EXPLICIT, Channel.WEB)
    assert event.evidence == {"form": "signup", "ip": "203.0.113.9"}
    assert event.occurred_at == event.recorded_at == clock.now
    assert event.prev_hash == "0" * 64 and len(event.hash) == 64
    second = ledger.append(opt_out())
    assert second.prev_hash == event.hash
    assert [e.event_id for e in ledger.history(USER)] == [event.event_id, second.event_id]
    assert ledger.verify().ok


def test_same_source_ref_records_once(ledger):
    first = ledger.append(web_opt_in(ref="req-42"))
    again = ledger.append(web_opt_in(ref="req-42"))
    both = ledger.append_many([web_opt_in(ref="req-43"), web_opt_in(ref="req-43")])
    assert again.event_id == first.event_id
    assert both[0].event_id == both[1].event_id
    assert count_events(ledger) == 2


def test_a_batch_with_recorded_and_repeated_source_refs_adds_each_event_once(ledger):
    first = ledger.append(web_opt_in(ref="form-1"))
    batch = ledger.append_many([opt_out(ref="stop-1"), web_opt_in(ref="form-1"), opt_out(ref="stop-1"), notice_given()])
    assert batch[1] == first and batch[0] == batch[2]
    assert [e.seq for e in batch] == [2, 1, 2, 3]
    assert ledger.verify().ok and ledger.verify().checked == 3


def test_source_ref_reused_for_another_event_is_refused(ledger):
    ledger.append(web_opt_in(ref="req-1"))
    with pytest.raises(SourceRefConflict, match="req-1"):
        ledger.append(opt_out(ref="req-1"))
    assert count_events(ledger) == 1


@pytest.mark.parametrize(
    "draft, reason",
    [
        (EventDraft(USER, Action.OPT_IN, Channel.WEB, "r", "staff", evidence={"a": 1}), "consent_text"),
        (EventDraft(USER, Action.OPT_IN, Channel.EMAIL, "r", "staff", consent_text="   ", evidence={"a": 1}), "consent_text"),
        (EventDraft(USER, Action.OPT_IN, Channel.PAPER, "r", "staff", consent_text="I agree"), "evidence"),
        (EventDraft(USER, Action.IMPLICIT, Channel.WEB, "r", "staff"), "user-initiated"),
        (EventDraft("+16505551234", Action.OPT_OUT, Channel.API, "r", "staff"), "digits only"),
        (EventDraft("0650555", Action.OPT_OUT, Channel.API, "r", "staff"), "invalid phone number"),
        (EventDraft("12345", Action.OPT_OUT, Channel.API, "r", "staff"), "invalid phone number"),
        (EventDraft("1650555123456789", Action.OPT_OUT, Channel.API, "r", "staff"), "invalid phone number"),
        (EventDraft("16505551234", Action.OPT_OUT, Channel.API, "", "staff"), "source_ref"),
        (EventDraft(USER, Action.OPT_OUT, Channel.API, "r", "staff", evidence={"x": float("nan")}), "JSON"),
    ],
)
def test_invalid_events_are_refused_and_nothing_is_written(ledger, draft, reason):
    with pytest.raises(InvalidEvent) as raised:
        ledger.append_many([opt_out(ref="fine"), draft])
    assert reason in str(raised.value)
    assert "\n" not in str(raised.value)
    assert count_events(ledger) == 0


def test_occurred_at_must_be_zoned_and_not_in_the_future(ledger, clock):
    with pytest.raises(InvalidEvent, match="time zone"):
        ledger.append(web_opt_in(occurred_at=clock.now.replace(tzinfo=None)))
    with pytest.raises(InvalidEvent, match="future"):
        ledger.append(web_opt_in(occurred_at=clock.now + timedelta(hours=1)))
    past = clock.now - timedelta(days=30)
    assert ledger.append(web_opt_in(occurred_at=past)).occurred_at == past


def test_first_message_opens_a_session_with_implicit_consent(ledger, clock):
    event = ledger.record_inbound(USER, "wamid.A", clock.now)
    assert (event.action, event.basis, event.channel) == (Action.IMPLICIT, Basis.IMPLICIT, Channel.WHATSAPP_SESSION)
    assert event.evidence == {"message_id": "wamid.A"}
    state = ledger.state(USER)
    assert state.state is State.IMPLICIT and state.consent_event == event
    assert state.window_open_until(clock.now) == clock.now + timedelta(hours=24)


def test_session_logging_is_idempotent_and_only_at_session_start(ledger, clock):
    first = clock.now
    assert ledger.record_inbound(USER, "wamid.A", first) is not None
    assert ledger.record_inbound(USER, "wamid.A", first) is None  # redelivery
    assert ledger.record_inbound(USER, "wamid.B", clock.advance(hours=23)) is None  # same session
    # The window runs from the last message, so 30 h after the first is still inside it.
    assert ledger.record_inbound(USER, "wamid.C", clock.advance(hours=7)) is None
    later = ledger.record_inbound(USER, "wamid.D", clock.advance(hours=25))
    assert later is not None and later.evidence == {"message_id": "wamid.D"}
    assert ledger.record_inbound(USER, "wamid.A", first) is None  # a days-late redelivery opens nothing
    assert [e.action for e in ledger.history(USER)] == [Action.IMPLICIT, Action.IMPLICIT]


def test_window_follows_the_last_inbound_message(ledger, clock):
    first = clock.now
    ledger.record_inbound(USER, "wamid.A", first)
    ledger.record_inbound(USER, "wamid.B", clock.advance(hours=5))
    ledger.record_inbound(USER, "wamid.late", first + timedelta(hours=1))  # late delivery of an older message
    state = ledger.state(USER)
    assert state.window_open_until(clock.now) == first + timedelta(hours=29)
    assert state.window_open_until(first + timedelta(hours=29, seconds=1)) is None


def test_stop_start_and_sessions_after_stop(ledger, clock):
    ledger.record_inbound(USER, "wamid.A", clock.now)
    ledger.append(opt_out(ref="wamid.STOP"))
    assert ledger.state(USER).state is State.OPTED_OUT
    clock.advance(days=3)
    ledger.record_inbound(USER, "wamid.B", clock.now)  # writing again is not START (R10)
    state = ledger.state(USER)
    assert state.state is State.OPTED_OUT and state.marketing is Marketing.OPTED_OUT
    assert state.session_event.evidence == {"message_id": "wamid.B"}
    start = ledger.append(keyword_opt_in(ref="wamid.START"))  # R8: lifts the opt-out, restores what they had
    state = ledger.state(USER)
    assert (state.state, state.marketing) == (State.IMPLICIT, Marketing.NONE)
    assert state.consent_event.evidence == {"message_id": "wamid.A"}
    assert start.channel is Channel.WHATSAPP_KEYWORD and start.basis is Basis.EXPLICIT


def test_a_backdated_opt_in_recorded_after_a_stop_does_not_undo_it(ledger, clock):
    """State follows when things happened, not when they were recorded: a paper form from
    last year, imported today, says nothing about last week's STOP."""
    stop = ledger.append(opt_out(ref="wamid.STOP"))
    ledger.append(web_opt_in(ref="paper-2025", occurred_at=clock.now - timedelta(days=300)))
    state = ledger.state(USER)
    assert (state.state, state.consent_event) == (State.OPTED_OUT, stop)
    assert ledger.states([USER, OTHER_USER])[USER] == state
    assert [event.source_ref for event in ledger.history(USER)] == ["paper-2025", "wamid.STOP"]  # oldest first


def test_a_stop_redelivered_late_does_not_undo_the_start_sent_after_it(ledger, clock):
    signed_up = ledger.append(web_opt_in(occurred_at=clock.now - timedelta(days=2)))
    ledger.append(keyword_opt_in(ref="wamid.START"))
    ledger.append(replace(opt_out(ref="wamid.STOP-sent-an-hour-earlier"), occurred_at=clock.now - timedelta(hours=1)))
    state = ledger.state(USER)
    assert (state.state, state.marketing, state.consent_event) == (State.OPTED_IN, Marketing.ALLOWED, signed_up)
    assert state.opt_out_event.source_ref == "wamid.STOP-sent-an-hour-earlier"


def test_start_restores_an_explicit_opt_in_with_its_own_evidence(ledger, clock):
    signed_up = ledger.append(web_opt_in())
    ledger.append(opt_out(ref="wamid.STOP"))
    clock.advance(minutes=5)
    ledger.append(keyword_opt_in(ref="wamid.START"))
    state = ledger.state(USER)
    assert (state.state, state.marketing, state.consent_event) == (State.OPTED_IN, Marketing.ALLOWED, signed_up)


def test_start_creates_no_consent_the_user_had_not_given(ledger, clock):
    ledger.record_inbound(USER, "wamid.HELLO", clock.now)
    ledger.append(keyword_opt_in(ref="wamid.START-without-a-stop"))  # nothing to lift
    state = ledger.state(USER)
    assert (state.state, state.marketing) == (State.IMPLICIT, Marketing.NONE)


@pytest.mark.parametrize("before_the_stop", [True, False])
def test_a_marketing_opt_out_survives_stop_then_start(ledger, clock, before_the_stop):
    ledger.append(web_opt_in())
    marketing_stop = opt_out(ref="wamid.STOP-PROMOTIONS", scope=Scope.MARKETING, channel=Channel.WHATSAPP_BUTTON)
    if before_the_stop:
        ledger.append(marketing_stop)
    clock.advance(minutes=1)
    ledger.append(opt_out(ref="wamid.STOP"))
    if not before_the_stop:  # tapped while stopped
        clock.advance(minutes=1)
        ledger.append(marketing_stop)
    clock.advance(minutes=1)
    ledger.append(keyword_opt_in(ref="wamid.START"))
    state = ledger.state(USER)
    assert (state.state, state.marketing) == (State.OPTED_IN, Marketing.OPTED_OUT)
    clock.advance(minutes=1)
    ledger.append(replace(keyword_opt_in(ref="wamid.RESUME-PROMOTIONS"), scope=Scope.MARKETING, channel=Channel.WHATSAPP_BUTTON))
    assert ledger.state(USER).marketing is Marketing.ALLOWED  # only a marketing resume lifts it


def test_events_of_the_same_second_keep_their_recording_order(ledger, clock):
    """Meta's timestamps are whole seconds: a STOP stamped 12:00:00 may follow an opt-in recorded at 12:00:00.5."""
    ledger.append(web_opt_in(occurred_at=clock.now.replace(microsecond=500_000)))
    ledger.append(replace(opt_out(), occurred_at=clock.now.replace(microsecond=0)))
    assert ledger.state(USER).state is State.OPTED_OUT


def test_marketing_scope_is_tracked_apart(ledger):
    opt_in = ledger.append(web_opt_in())
    ledger.append(opt_out(ref="prefs-1", scope=Scope.MARKETING, channel=Channel.WHATSAPP_PREFERENCES))
    state = ledger.state(USER)
    assert (state.state, state.marketing, state.consent_event) == (State.OPTED_IN, Marketing.OPTED_OUT, opt_in)
    ledger.append(web_opt_in(ref="prefs-2", scope=Scope.MARKETING))
    assert ledger.state(USER).marketing is Marketing.ALLOWED
    assert ledger.state(OTHER_USER).state is State.NONE


def test_a_session_never_downgrades_an_explicit_opt_in(ledger, clock):
    opt_in = ledger.append(web_opt_in())
    ledger.record_inbound(USER, "wamid.A", clock.now)
    state = ledger.state(USER)
    assert state.state is State.OPTED_IN and state.consent_event == opt_in


def test_opt_out_notice_is_recorded_once(ledger):
    first = ledger.append(notice_given(ref="welcome-1"))
    ledger.append(notice_given(ref="help-2"))
    assert ledger.state(USER).notice_event == first


def test_events_can_be_filtered_by_time_and_user(ledger, clock):
    ledger.append(web_opt_in(ref="a"))
    clock.advance(days=1)
    ledger.append(web_opt_in(OTHER_USER, ref="b"))
    clock.advance(days=1)
    ledger.append(opt_out(ref="c"))
    day_two = clock.now - timedelta(days=1)
    assert [e.source_ref for e in ledger.events()] == ["a", "b", "c"]
    assert [e.source_ref for e in ledger.events(since=day_two)] == ["b", "c"]
    assert [e.source_ref for e in ledger.events(until=day_two)] == ["a"]
    assert [e.source_ref for e in ledger.events(identifier=USER)] == ["a", "c"]


@pytest.mark.parametrize("statement", ["UPDATE consent_events SET consent_text = 'x'", "DELETE FROM consent_events"])
def test_the_database_refuses_updates_and_deletes(ledger, statement):
    ledger.append(web_opt_in())
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        with ledger.engine.begin() as conn:
            conn.exec_driver_sql(statement)
    assert count_events(ledger) == 1 and ledger.verify().ok


def _write_concurrently(url: str, worker: int, count: int) -> None:
    ledger = Ledger(make_engine(url), key=LedgerKey(LEDGER_SIGNING_KEY))
    for i in range(count):
        wa_id = f"1555000{worker:02d}{i:03d}"
        ledger.append(web_opt_in(wa_id, ref=f"w{worker}-{i}"))
        ledger.record_inbound(wa_id, f"wamid.w{worker}-{i}", ledger.clock())
    ledger.engine.dispose()


def test_two_processes_writing_at_once_keep_the_chain_valid(ledger, database_url):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_concurrently, args=(database_url, n, 100)) for n in (1, 2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    result = ledger.verify()
    assert result.ok, result.problem
    assert result.checked == count_events(ledger) == 400


def test_states_of_many_users_match_their_states_one_by_one(ledger, clock):
    ledger.record_inbound(USER, "wamid.A", clock.now)
    ledger.append(opt_out(ref="wamid.STOP"))
    ledger.append(web_opt_in(OTHER_USER, ref="form-2"))
    ledger.append(notice_given(OTHER_USER, ref="welcome-2"))
    never_seen = "15550009999"
    states = ledger.states([USER, OTHER_USER, never_seen, USER])
    assert states == {wa_id: ledger.state(wa_id) for wa_id in (USER, OTHER_USER, never_seen)}
    assert states[USER].last_inbound_at == clock.now and states[never_seen].state is State.NONE


class _BusyCursor:
    """Answers "database is locked" a number of times, as SQLite does while another process turns a new file to WAL."""

    def __init__(self, busy_times: int, error: str = "database is locked"):
        self.busy_times, self.error, self.calls = busy_times, error, 0

    def execute(self, statement: str) -> None:
        self.calls += 1
        if self.calls <= self.busy_times:
            raise sqlite3.OperationalError(self.error)


def test_turning_a_new_sqlite_file_to_wal_waits_out_another_process():
    """`dev.py start` runs web processes and a worker at once: none may die of "database is locked"."""
    cursor = _BusyCursor(busy_times=3)
    _switch_to_wal(cursor)
    assert cursor.calls == 4
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _switch_to_wal(_BusyCursor(busy_times=1000), patience=0.2)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        _switch_to_wal(_BusyCursor(busy_times=1, error="disk I/O error"))
