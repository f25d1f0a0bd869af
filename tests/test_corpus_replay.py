"""Replay of webhook bodies written by other projects (`../shared/corpus/`, beside the repository;
skipped when it is absent): every body signed and posted twice as it is, then twice stamped now.
Whatever they hold, the bot never answers 5xx, never logs a traceback, has each effect once, welcomes
no system notice, and honours the STOP-like texts among them."""
from __future__ import annotations

import json
import logging
import time

import pytest
import sqlalchemy as sa

from bot.domain.consent import State
from bot.domain.identity import InvalidNumber, normalize_wa_id
from bot.domain.keywords import Intent
from bot.services import services_of
from bot.settings import PROJECT_ROOT
from bot.storage.schema import account_notices, consent_events, contacts, early_statuses, outbound_messages, unread_webhooks
from tests.test_webhook import post

CORPUS = PROJECT_ROOT.parent / "shared" / "corpus"
BODIES = sorted(CORPUS.rglob("*.json")) if CORPUS.is_dir() else []
TABLES = (consent_events, outbound_messages, unread_webhooks, account_notices, early_statuses, contacts)

pytestmark = pytest.mark.skipif(not BODIES, reason=f"no replay corpus at {CORPUS}")


def stamped_now(node: object, now: int) -> object:
    """The body with every `timestamp` moved to `now`, so that windows are open."""
    if isinstance(node, dict):
        return {k: (str(now) if isinstance(v, str) else now) if k == "timestamp" else stamped_now(v, now) for k, v in node.items()}
    if isinstance(node, list):
        return [stamped_now(item, now) for item in node]
    return node


def row_counts(app) -> dict[str, int]:
    with services_of(app).engine.connect() as conn:
        return {table.name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() for table in TABLES}


def inbound_texts(body: object) -> list[tuple[str, str, str]]:
    """(sender, message type, text) of every message in a body that reads as Meta's."""
    found = []
    for entry in (body.get("entry") or []) if isinstance(body, dict) else []:
        for change in (entry.get("changes") or []) if isinstance(entry, dict) else []:
            value = change.get("value") if isinstance(change, dict) else None
            for message in (value.get("messages") or []) if isinstance(value, dict) else []:
                if isinstance(message, dict) and isinstance(message.get("from"), str):
                    text = (message.get("text") or {}).get("body", "") if isinstance(message.get("text"), dict) else ""
                    found.append((message["from"], str(message.get("type")), text))
    return found


@pytest.mark.parametrize("path", BODIES, ids=[str(path.relative_to(CORPUS)) for path in BODIES])
def test_a_body_from_another_project_is_answered_and_recorded_once(app, client, caplog, path):
    caplog.set_level(logging.INFO)
    raw = path.read_bytes()
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    now_copy = json.dumps(stamped_now(body, int(time.time()))).encode() if body is not None else raw
    for version in (raw, now_copy):
        first = post(client, version)
        after_first = row_counts(app)
        second = post(client, version)
        assert (first.status_code, second.status_code) == (200, 200), (first.get_json(), second.get_json())
        assert row_counts(app) == after_first, "a redelivery added rows"
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()], "a traceback was logged"

    services = services_of(app)
    last_keyword: dict[str, tuple[Intent, str]] = {}
    for sender, kind, text in inbound_texts(body):
        try:
            wa_id = normalize_wa_id(sender)
        except InvalidNumber:  # a placeholder sender ("PHONE_NUMBER"): kept as unread
            continue
        match = services.keywords.match_text(text) if kind == "text" else None
        if match is not None and match.intent in (Intent.OPT_OUT, Intent.OPT_IN):
            last_keyword[wa_id] = (match.intent, text)
        if kind == "system":
            with services.engine.connect() as conn:
                answers = conn.execute(sa.select(sa.func.count()).where(outbound_messages.c.recipient == wa_id)).scalar_one()
            assert answers == 0, "a system message was answered"
    for wa_id, (intent, text) in last_keyword.items():
        if intent is Intent.OPT_OUT:
            assert services.ledger.state(wa_id).state is State.OPTED_OUT, f"{text!r} from {wa_id} did not opt out"
