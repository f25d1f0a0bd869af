"""Hostile input across the surfaces: forged signatures, injection strings, path tricks, secrets.

Never a 500, never a traceback or a secret to the caller, never an event that should not be.
"""
from __future__ import annotations

import csv
import io
import json
import logging

import pytest

from bot import create_app
from bot.domain.consent import Action
from bot.services import STARTUP_ERRORS, services_of
from tests.conftest import ADMIN_TOKEN, APP_SECRET, app_config
from tests.helpers import USER
from tests.test_webhook import actions, payload, post, sign

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
INJECTIONS = [
    "'; DROP TABLE consent_events; --",
    "<script>alert(1)</script>",
    "{{ config.SECRET_KEY }} {business} %s %(x)s",
    "=HYPERLINK(\"http://evil.example\",\"click\")",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\u202e\u0000 nul and bidi",
]


@pytest.fixture
def raw_stop() -> bytes:
    return json.dumps(payload("stop_message.json")).encode()


@pytest.mark.parametrize(
    "forge",
    [
        lambda raw: sign(raw)[:-2],  # truncated
        lambda raw: sign(raw).upper(),  # SHA256= prefix is not Meta's
        lambda raw: sign(raw + b" "),  # signature of a slightly different body
        lambda raw: sign(raw, secret=APP_SECRET + "x"),
        lambda raw: sign(raw, secret=""),
        lambda raw: "sha256=" + "0" * 64,
        lambda raw: sign(raw) + "," + sign(raw),
    ],
    ids=["truncated", "upper-prefix", "other-body", "near-secret", "empty-secret", "zeros", "doubled"],
)
def test_forged_signatures_record_nothing(app, client, raw_stop, forge):
    response = post(client, raw_stop, forge(raw_stop))
    assert response.status_code == 401 and actions(app) == []


def test_a_replayed_signature_on_changed_bytes_is_refused(app, client, raw_stop):
    signature = sign(raw_stop)
    assert post(client, raw_stop.replace(b'"STOP"', b'"START"'), signature).status_code == 401
    assert post(client, raw_stop + b"\n", signature).status_code == 401
    assert actions(app) == []


def test_the_signature_must_be_in_its_own_header(app, client, raw_stop):
    response = client.post("/webhook", data=raw_stop, headers={"X-Hub-Signature": sign(raw_stop), "Content-Type": "application/json"})
    assert response.status_code == 401 and actions(app) == []


def test_injection_strings_are_stored_verbatim_and_exported_inert(app, client):
    """User text reaches the ledger as data: SQL stays text, HTML stays escaped JSON, formulas are defused in CSV."""
    body = payload("possible_opt_out.json")
    value = body["entry"][0]["changes"][0]["value"]
    message, sender = value["messages"][0], value["messages"][0]["from"]
    for n, text in enumerate(INJECTIONS):
        message["id"] = f"wamid.hostile{n}"
        message["text"]["body"] = f"{text} why do you keep messaging me"
        value["contacts"][0]["profile"]["name"] = text
        assert post(client, body).status_code == 200
    stored = [e.consent_text for e in services_of(app).ledger.history(sender) if e.action.value == "possible_opt_out"]
    # Verbatim, but for NUL, which PostgreSQL text cannot hold: both backends store U+FFFD.
    assert stored == [f"{text} why do you keep messaging me".replace("\x00", "\ufffd") for text in INJECTIONS]
    exported = client.get("/api/v1/audit", headers=AUTH).get_data(as_text=True)
    for row in csv.DictReader(io.StringIO(exported)):
        assert not row["consent_text"].startswith(("=", "+", "-", "@"))
    assert client.get(f"/api/v1/consents/{sender}", headers=AUTH).is_json


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_strings_in_staff_fields_are_refused_or_stored_as_text(client, app, text):
    for method, path, body in [
        ("GET", f"/api/v1/consents/{text}", None),
        ("GET", "/api/v1/audit", None),
        ("GET", f"/api/v1/messages/{text}", None),
        ("GET", f"/api/v1/campaigns/{text}", None),
        ("POST", "/api/v1/messages", {"to": text, "text": "hi"}),
        ("POST", "/api/v1/messages", {"to": USER, "template": {"name": text, "language": "en", "category": "utility"}}),
        ("POST", "/api/v1/consents", {"wa_id": USER, "action": "opt_in", "channel": "web", "consent_text": text, "evidence": {"x": text}}),
    ]:
        response = client.open(path, method=method, headers=AUTH, json=body, query_string={"wa_id": text} if path.endswith("audit") else None)
        assert response.status_code < 500 and response.is_json or response.status_code == 200
        assert "Traceback" not in response.get_data(as_text=True)
    [event] = services_of(app).ledger.history(USER)
    assert event.consent_text == text.replace("\x00", "\ufffd") and event.evidence == {"x": text}


def test_a_body_with_thousands_of_entries_is_read_whole(app, client):
    status = payload("status_delivered.json")["entry"][0]
    entries = []
    for n in range(2000):
        entry = json.loads(json.dumps(status))
        entry["changes"][0]["value"]["statuses"][0]["id"] = f"wamid.unknown{n}"
        entries.append(entry)
    response = post(client, {"object": "whatsapp_business_account", "entry": entries})
    assert response.status_code == 200 and response.get_json()["events"] == 2000


def test_error_bodies_and_logs_never_carry_secrets(app, client, raw_stop, caplog):
    caplog.set_level(logging.DEBUG)
    responses = [
        post(client, raw_stop, "sha256=bad"),
        client.get("/api/v1/consents/" + USER, headers={"Authorization": "Bearer nope"}),
        client.get("/webhook?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1"),
        post(client, raw_stop),
    ]
    secrets = (APP_SECRET, ADMIN_TOKEN, services_of(app).settings.whatsapp_verify_token, services_of(app).settings.whatsapp_token, app.config["SECRET_KEY"])
    for text in [r.get_data(as_text=True) for r in responses] + [caplog.text]:
        for secret in secrets:
            assert secret not in text
    assert USER not in caplog.text  # numbers are masked in logs


def test_file_options_with_path_tricks_fail_in_one_line(runner, tmp_path):
    for args in (
        ["consent", "export", "-o", str(tmp_path)],  # a directory
        ["consent", "export", "-o", str(tmp_path / "missing" / ".." / "missing" / "x.csv")],
        ["consent", "import", "/dev/null"],
        ["consent", "import", str(tmp_path / ".." / "nope.csv")],
        ["campaign", "send", "x", "--category", "utility", "--recipients", "/dev/null"],
    ):
        result = runner.invoke(args=args)
        assert result.exit_code != 0 and "Traceback" not in result.output, args
        errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, result.output


@pytest.mark.parametrize("keywords_file", ["/", "/dev/null", "../../etc/passwd", "keywords.yml\x00.txt"])
def test_a_keywords_file_option_with_path_tricks_stops_start_up_with_one_line(tmp_path, redis_url, graph, keywords_file):
    config = app_config(f"sqlite:///{tmp_path / 'ledger.db'}", redis_url, graph, KEYWORDS_FILE=keywords_file)
    with pytest.raises(STARTUP_ERRORS) as stopped:
        create_app(config)
    assert "\n" not in str(stopped.value)


@pytest.mark.parametrize("message_id", ["wamid." + "x" * 300, "wamid.\x00nul", "wamid.\nnewline"])
def test_unstorable_ids_from_meta_are_kept_for_inspection_not_retried_forever(app, client, message_id):
    """A value the database cannot take must not turn into a 503 that Meta retries for 7 days."""
    body = payload("stop_message.json")
    body["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = message_id
    status = payload("status_delivered.json")
    status["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = message_id
    assert post(client, body).status_code == 200
    assert post(client, status).status_code == 200


def test_a_lone_surrogate_in_a_users_text_still_records_the_stop(app, client):
    """JSON may carry a `\\ud800` escape that no UTF-8 store can hold: the text keeps U+FFFD in its place."""
    body = payload("stop_message.json")
    body["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "STOP \ud800"
    notice = payload("account_update_violation.json")
    notice["entry"][0]["changes"][0]["value"]["event"] = "FLAGGED \udfff"
    odd = {"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "novel\ud800", "value": {}}]}]}
    for document in (body, notice, odd):
        assert post(client, json.dumps(document).encode()).status_code == 200  # json.dumps writes the escapes
    [*_, stop] = services_of(app).ledger.history(USER)
    assert stop.action is Action.OPT_OUT and stop.consent_text == "STOP \ufffd"
    assert services_of(app).ledger.verify().ok
