"""SPEC §2's table, cell by cell: the policy is a pure function of derived state, kind and time."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

import pytest

from bot.domain.consent import Action, Channel, ConsentEvent, Scope, derive_state
from bot.domain.policy import ImplicitCoverage, MessageKind, Refusal, decide

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
_seq = count(1)


def event(action: Action, scope: Scope = Scope.ALL) -> ConsentEvent:
    n = next(_seq)
    return ConsentEvent(
        seq=n, event_id=f"evt-{n}", identifier="16505551234", person_id="p-1", action=action, scope=scope, basis=None,
        channel=Channel.API, consent_text=None, evidence={}, source_ref=f"ref-{n}", occurred_at=NOW,
        recorded_at=NOW, recorded_by="test", prev_hash="0" * 64, hash="f" * 64,
    )


# The table's columns, as the event histories that produce them.
COLUMNS = {
    "no consent": [],
    "implicit": [event(Action.IMPLICIT)],
    "explicit opt-in": [event(Action.OPT_IN)],
    "opted out (all)": [event(Action.IMPLICIT), event(Action.OPT_IN), event(Action.OPT_OUT)],
    "marketing opted out": [event(Action.OPT_IN), event(Action.OPT_OUT, Scope.MARKETING)],
}

Y = None  # allowed
N_C, OUT, M_OUT, CLOSED = Refusal.NO_CONSENT, Refusal.OPTED_OUT, Refusal.MARKETING_OPTED_OUT, Refusal.WINDOW_CLOSED
K = MessageKind

# kind, window open?, expected per column (no consent, implicit, explicit, opted out, marketing opted out)
TABLE = [
    (K.FREE_FORM, True, [N_C, Y, Y, OUT, Y]),
    (K.REPLY, True, [N_C, Y, Y, Y, Y]),
    (K.STOP_CONFIRMATION, True, [N_C, Y, Y, Y, Y]),
    (K.HELP_ANSWER, True, [N_C, Y, Y, Y, Y]),
    (K.START_CONFIRMATION, True, [N_C, Y, Y, OUT, Y]),  # a START confirmation still queued after a later STOP
    (K.FREE_FORM, False, [N_C, CLOSED, CLOSED, OUT, CLOSED]),
    (K.REPLY, False, [N_C, CLOSED, CLOSED, CLOSED, CLOSED]),
    (K.STOP_CONFIRMATION, False, [N_C, CLOSED, CLOSED, CLOSED, CLOSED]),
    (K.HELP_ANSWER, False, [N_C, CLOSED, CLOSED, CLOSED, CLOSED]),
    (K.START_CONFIRMATION, False, [N_C, CLOSED, CLOSED, OUT, CLOSED]),
    (K.UTILITY_TEMPLATE, False, [N_C, Y, Y, OUT, Y]),
    (K.MARKETING_TEMPLATE, False, [N_C, N_C, Y, OUT, M_OUT]),
    (K.AUTHENTICATION_TEMPLATE, False, [N_C, Y, Y, OUT, Y]),
    # Templates do not care about the window.
    (K.UTILITY_TEMPLATE, True, [N_C, Y, Y, OUT, Y]),
    (K.MARKETING_TEMPLATE, True, [N_C, N_C, Y, OUT, M_OUT]),
    (K.AUTHENTICATION_TEMPLATE, True, [N_C, Y, Y, OUT, Y]),
]

CELLS = [
    pytest.param(kind, window, column, expected, id=f"{kind.value}-{'open' if window else 'closed'}-{column}")
    for kind, window, row in TABLE
    for column, expected in zip(COLUMNS, row)
]


def state_for(column: str, window_open: bool):
    last_inbound = NOW - timedelta(hours=2 if window_open else 30)
    return derive_state("16505551234", COLUMNS[column], last_inbound)


@pytest.mark.parametrize("kind, window_open, column, expected", CELLS)
def test_every_cell_of_the_table(kind, window_open, column, expected):
    consent = state_for(column, window_open)
    decision = decide(consent, kind, NOW)
    assert decision.reason == expected
    assert decision.allowed is (expected is None)
    if decision.allowed:
        assert decision.consent_event is not None  # every allowed message names its consent event


def test_allowed_messages_name_the_event_that_allows_them():
    implicit = decide(state_for("implicit", True), K.REPLY, NOW)
    assert implicit.consent_event_id == COLUMNS["implicit"][0].event_id
    marketing = decide(state_for("explicit opt-in", False), K.MARKETING_TEMPLATE, NOW)
    assert marketing.consent_event_id == COLUMNS["explicit opt-in"][0].event_id
    opted_out = state_for("opted out (all)", True)
    assert decide(opted_out, K.STOP_CONFIRMATION, NOW).consent_event == COLUMNS["opted out (all)"][2]
    assert decide(opted_out, K.HELP_ANSWER, NOW).consent_event == COLUMNS["opted out (all)"][0]


@pytest.mark.parametrize("kind", [K.UTILITY_TEMPLATE, K.AUTHENTICATION_TEMPLATE])
def test_implicit_coverage_of_templates_is_configurable(kind):
    consent = state_for("implicit", False)
    strict = ImplicitCoverage(utility=False, authentication=False)
    assert decide(consent, kind, NOW, strict).reason is Refusal.NO_CONSENT
    assert decide(state_for("explicit opt-in", False), kind, NOW, strict).allowed


def test_start_after_stop_allows_again_and_a_new_session_does_not():
    history = [event(Action.OPT_OUT), event(Action.IMPLICIT)]
    still_out = derive_state("16505551234", history, NOW)
    assert decide(still_out, K.UTILITY_TEMPLATE, NOW).reason is Refusal.OPTED_OUT
    back_in = derive_state("16505551234", [*history, event(Action.OPT_IN)], NOW)
    assert decide(back_in, K.MARKETING_TEMPLATE, NOW).allowed


def test_window_closes_exactly_24_hours_after_the_last_message():
    consent = derive_state("16505551234", [event(Action.IMPLICIT)], NOW - timedelta(hours=24))
    assert decide(consent, K.REPLY, NOW).reason is Refusal.WINDOW_CLOSED
    assert decide(consent, K.REPLY, NOW - timedelta(seconds=1)).allowed
