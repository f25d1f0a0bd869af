"""Tried from outside as an attacker would (issue 17): each way found to message someone who said
STOP, to crash the bot or to fool it, now answered cleanly and changing nothing it must not."""
from __future__ import annotations

import json
import stat
from dataclasses import replace
from datetime import timedelta

import pytest

from bot.access_log import masked
from bot.domain.consent import Action, Channel, State, derive_state
from bot.domain.policy import MessageKind, Refusal
from bot.services import services_of
from bot.storage.ledger import utc_now
from bot.storage.outbox import Message, QueueName, Template
from tests.conftest import ADMIN_TOKEN
from tests.helpers import OTHER_USER, USER, web_opt_in
from tests.test_identities import send_queued
from tests.test_policy import NOW, event
from tests.test_webhook import payload, post, sign, unread

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def marketing_to_user(app):
    return services_of(app).outbox.submit(
        Message(USER, MessageKind.MARKETING_TEMPLATE, template=Template("spring_sale", "en")), f"sale-{utc_now()}", "staff:test",
        QueueName.BULK,
    )


# -- no event outranks a later opt-out by the time it claims (R7) -------------------------------


def opt_in_claiming(occurred_at) -> dict:
    return {
        "wa_id": USER, "action": "opt_in", "channel": "web", "consent_text": "Offers from Acme Bakery on WhatsApp",
        "evidence": {"form": "signup"}, "occurred_at": occurred_at.isoformat(),
    }


def test_an_opt_in_claiming_a_later_time_cannot_override_a_stop(app, client):
    """Before: an opt-in stamped 4 minutes ahead was accepted and folded after the user's STOP."""
    assert post(client, payload("stop_message.json")).status_code == 200
    response = client.post("/api/v1/consents", json=opt_in_claiming(utc_now() + timedelta(minutes=4)), headers=AUTH)
    assert response.status_code == 422 and response.get_json()["detail"].startswith("occurred_at is in the future")
    assert services_of(app).ledger.state(USER).state is State.OPTED_OUT
    assert marketing_to_user(app).reason is Refusal.OPTED_OUT


def test_a_time_a_few_seconds_ahead_is_recorded_as_the_moment_of_recording(app, client):
    """A caller's clock a little fast is no reason to refuse; it is no reason to believe it either."""
    response = client.post("/api/v1/consents", json=opt_in_claiming(utc_now() + timedelta(seconds=30)), headers=AUTH)
    assert response.status_code == 201
    recorded = response.get_json()
    assert recorded["occurred_at"] == recorded["recorded_at"]


def test_the_csv_import_refuses_a_row_from_the_future(app, runner, tmp_path):
    path = tmp_path / "consents.csv"
    ahead = (utc_now() + timedelta(minutes=4)).isoformat()
    path.write_text(f"wa_id,action,channel,consent_text,evidence,occurred_at\n{USER},opt_in,paper,Offers please,F-1,{ahead}\n")
    result = runner.invoke(args=["consent", "import", str(path)])
    assert result.exit_code == 1 and "future" in result.output
    assert services_of(app).ledger.state(USER).state is State.NONE


def test_a_stored_event_that_claims_a_later_time_folds_at_its_recording():
    """Rows written before the refusal may hold such claims: an opt-in recorded at noon claiming
    12:04 does not outrank the STOP recorded at 12:01."""
    forged = replace(event(Action.OPT_IN), channel=Channel.WEB, occurred_at=NOW + timedelta(minutes=4))
    stop = replace(event(Action.OPT_OUT), channel=Channel.WHATSAPP_KEYWORD, occurred_at=NOW + timedelta(minutes=1),
                   recorded_at=NOW + timedelta(minutes=1))
    assert derive_state(USER, [forged, stop]).state is State.OPTED_OUT


# -- crashes and leaks found from outside ------------------------------------------------------


def test_a_non_ascii_signature_is_a_401_not_a_crash(app, client):
    raw = json.dumps(payload("stop_message.json")).encode()
    response = client.post(
        "/webhook", data=raw, headers={"Content-Type": "application/json", "X-Hub-Signature-256": "sha256=é" + sign(raw)[8:]},
    )
    assert response.status_code == 401 and response.get_json()["error"] == "bad_signature"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_json_nested_hundreds_deep_is_refused_where_it_comes_in(app, client, caplog):
    """It parses, then breaks whatever walks it recursively later: refused at the door instead."""
    body = json.dumps(payload("stop_message.json")).replace('"messages": [', f'"deep": {nested(500)}, "messages": [', 1).encode()
    response = post(client, body)
    assert response.status_code == 200
    [reason] = unread(app)
    assert reason == "body is nested deeper than 64 levels"
    consent = {"wa_id": USER, "action": "opt_out", "channel": "api", "evidence": {"deep": json.loads(nested(500))}}
    response = client.post("/api/v1/consents", data=json.dumps(consent), headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400 and response.get_json()["detail"].endswith("nested deeper than 64 levels")
    assert "Traceback" not in caplog.text


def test_an_import_cell_over_128_kib_is_refused_in_one_line(app, runner, tmp_path):
    path = tmp_path / "consents.csv"
    path.write_text(
        "wa_id,channel,consent_text,evidence,occurred_at\n"
        f"{USER},paper,Offers please,F-1,2026-10-01T09:30:00Z\n"
        f"{OTHER_USER},paper,{'x' * 140_000},F-2,2026-10-01T09:30:00Z\n"
    )  # the csv module's limit is 128 KiB a cell
    result = runner.invoke(args=["consent", "import", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "consents.csv:3: rejected: the row cannot be read: field larger than field limit (131072)\n" in result.output
    assert result.output.endswith("Error: 1 recorded, 0 already in the ledger, 1 rejected\n")
    assert services_of(app).ledger.state(USER).state is State.OPTED_IN


def test_an_import_naming_a_column_twice_is_refused(app, runner, tmp_path):
    path = tmp_path / "consents.csv"
    path.write_text(f"wa_id,channel,occurred_at,wa_id\n{USER},ivr,2026-10-01T09:30:00Z,{OTHER_USER}\n")
    result = runner.invoke(args=["consent", "import", str(path)])
    assert result.exit_code == 1 and "names wa_id more than once" in result.output
    assert list(services_of(app).ledger.events()) == []


@pytest.mark.parametrize("target", ["a directory", "a directory with a slash"])
def test_a_failed_export_leaves_no_copy_of_the_ledger_behind(app, runner, tmp_path, target):
    services_of(app).ledger.append(web_opt_in())
    exports = tmp_path / "exports"
    exports.mkdir()
    result = runner.invoke(args=["consent", "export", "-o", str(exports) + ("/" if target.endswith("slash") else "")])
    assert result.exit_code == 1 and result.output.startswith("Error: cannot write") and result.output.count("\n") == 1
    assert list(exports.iterdir()) == []


def test_an_export_is_readable_by_its_owner_only(app, runner, tmp_path):
    services_of(app).ledger.append(web_opt_in())
    exports = tmp_path / "exports"
    exports.mkdir()
    assert runner.invoke(args=["consent", "export", "-o", str(exports / "audit.csv")]).exit_code == 0
    assert stat.S_IMODE((exports / "audit.csv").stat().st_mode) == 0o600
    assert [path.name for path in exports.iterdir()] == ["audit.csv"]


@pytest.mark.parametrize(
    ("request_line", "logged"),
    [
        ("GET /api/v1/consents/+1-555-014-4001 HTTP/1.1", "GET /api/v1/consents/*******4001 HTTP/1.1"),
        ("number +1 555-014-4001 said stop", "number *******4001 said stop"),
        ("GET /api/v1/consents/%2B1%20(650)%20555-1234 HTTP/1.1", "GET /api/v1/consents/*******1234 HTTP/1.1"),
        (
            "GET /webhook?hub.mode=subscribe&hub.verify_token=s3cr3t-t0ken&hub.challenge=1158201444 HTTP/1.1",
            "GET /webhook?hub.mode=subscribe&hub.verify_token=***&hub.challenge=******1444 HTTP/1.1",
        ),
        ("GET /api/v1/audit?since=2026-10-01 HTTP/1.1", "GET /api/v1/audit?since=2026-10-01 HTTP/1.1"),
    ],
)
def test_the_access_log_shows_neither_numbers_nor_the_verify_token(request_line, logged):
    assert masked(request_line) == logged


def test_one_unstorable_send_answer_does_not_unrecord_the_others(app, graph):
    """Meta answering two sends with one message id: the database cannot store it twice. Before,
    the whole group failed, the sent messages stayed claimable and went out again."""
    recipients = [f"1650555{n:04d}" for n in range(10)]
    for n, recipient in enumerate(recipients):
        services_of(app).ledger.append(web_opt_in(recipient, ref=f"form-{n}"))
    result = services_of(app).campaigns.send(Template("spring_sale", "en"), MessageKind.MARKETING_TEMPLATE, recipients, "staff:test")
    graph.repeated_id = "wamid.SAME"
    sent = send_queued(app)
    assert [message.state.value for message in sent] == ["sent"] * 10 and result.queued == 10
    assert sorted(message.meta_message_id or "" for message in sent) == [""] * 9 + ["wamid.SAME"]
    assert send_queued(app) == [] and len(graph.requests) == 10  # nothing left to send again


# -- Idempotency-Key: requests compared as they are stored ---------------------------------------

ORDER_UPDATE = {"name": "order_update", "language": "en", "category": "utility"}
SPRING_SALE = {"name": "spring_sale", "language": "en", "category": "marketing"}


def with_key(key: str) -> dict:
    return {**AUTH, "Idempotency-Key": key}


def test_a_message_to_a_number_written_with_spaces_is_one_message_not_a_conflict(app, client):
    services_of(app).ledger.append(web_opt_in("15550166001"))
    asked = {"to": "+1 555 016 6001", "template": ORDER_UPDATE}
    first, again = (client.post("/api/v1/messages", headers=with_key("order-1"), json=asked) for _ in range(2))
    assert (first.status_code, again.status_code) == (202, 202) and first.get_json()["id"] == again.get_json()["id"]
    other = client.post("/api/v1/messages", headers=with_key("order-1"), json={**asked, "template": {**ORDER_UPDATE, "name": "order_late"}})
    assert other.status_code == 409 and other.get_json()["error"] == "idempotency_key_reused"


def test_a_campaign_key_with_another_list_of_the_same_length_is_refused(app, client):
    for n, recipient in enumerate((USER, OTHER_USER, "19175550100", "447700900123")):
        services_of(app).ledger.append(web_opt_in(recipient, ref=f"form-{n}"))
    first = client.post("/api/v1/campaigns", headers=with_key("spring"), json={"template": SPRING_SALE, "recipients": [USER, OTHER_USER]})
    assert first.status_code == 202
    reordered = client.post(
        "/api/v1/campaigns", headers=with_key("spring"), json={"template": SPRING_SALE, "recipients": [f"+{OTHER_USER}", USER]},
    )
    assert reordered.status_code == 202 and reordered.get_json()["campaign_id"] == first.get_json()["campaign_id"]
    other = client.post(
        "/api/v1/campaigns", headers=with_key("spring"), json={"template": SPRING_SALE, "recipients": ["19175550100", "447700900123"]},
    )
    assert other.status_code == 409 and other.get_json()["error"] == "idempotency_key_reused"
    assert services_of(app).campaigns.progress(first.get_json()["campaign_id"]).recipients == 2


def test_a_consent_key_with_other_evidence_is_refused(app, client):
    asked = {"wa_id": USER, "action": "opt_in", "channel": "web", "consent_text": "Offers from Acme Bakery", "evidence": {"form": "a"}}
    first, again = (client.post("/api/v1/consents", headers=with_key("form-77"), json=asked) for _ in range(2))
    assert (first.status_code, again.status_code) == (201, 201) and first.get_json()["event_id"] == again.get_json()["event_id"]
    for change in ({"evidence": {"form": "b"}}, {"consent_text": "Something else"}, {"channel": "paper"},
                   {"occurred_at": "2026-01-01T00:00:00Z"}):
        response = client.post("/api/v1/consents", headers=with_key("form-77"), json={**asked, **change})
        assert response.status_code == 409 and response.get_json()["error"] == "idempotency_key_reused", change
    assert len(services_of(app).ledger.history(USER)) == 1
