"""The staff API, on both databases: every endpoint's happy path, each refusal, auth, and bad bodies."""
from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
from rq import Queue

from bot.domain.consent import Action, Scope
from bot.services import services_of
from bot.staff.openapi import openapi_document
from bot.storage.ledger import utc_now
from bot.storage.schema import consent_events, outbound_messages
from tests.conftest import ADMIN_TOKEN
from tests.helpers import OTHER_USER, USER, opt_out, reconfigure, web_opt_in

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
OPT_IN = {
    "wa_id": "+1 (650) 555-1234", "action": "opt_in", "channel": "paper",
    "consent_text": "Yes, Acme Bakery may send me offers on WhatsApp.", "evidence": {"form_id": "F-1009", "signed": True},
}
SPRING_SALE = {"name": "spring_sale", "language": "en_US", "category": "marketing"}
ORDER_UPDATE = {"name": "order_update", "language": "en", "category": "utility", "components": [{"type": "body"}]}


def events(app) -> list:
    with services_of(app).ledger.engine.connect() as conn:
        return conn.execute(sa.select(consent_events.c.action, consent_events.c.identifier)).all()


def stored_messages(app) -> list:
    with services_of(app).ledger.engine.connect() as conn:
        return conn.execute(sa.select(outbound_messages.c.recipient, outbound_messages.c.state)).all()


# -- access ----------------------------------------------------------------------------------

ROUTES = [
    (method.upper(), "/api/v1" + path.replace("{wa_id}", USER).replace("{id}", "x"))
    for path, operations in openapi_document()["paths"].items()
    for method in operations
    if path != "/openapi.json"
]


def test_the_openapi_document_lists_exactly_the_routes_served(app):
    served = {
        (method, rule.rule.replace("<wa_id>", "{wa_id}").replace("<message_id>", "{id}").replace("<campaign_id>", "{id}"))
        for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/v1")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {
        (method.upper(), "/api/v1" + path)
        for path, operations in openapi_document()["paths"].items() for method in operations
    }
    assert served == documented


# Access control does not depend on the database: these run on SQLite only.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@sqlite_only
@pytest.mark.parametrize("method,path", ROUTES)
def test_every_endpoint_refuses_without_the_token(client, app, method, path):
    response = client.open(path, method=method, json=OPT_IN)
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized" and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert events(app) == [] and stored_messages(app) == []


@sqlite_only
@pytest.mark.parametrize("header", ["Bearer wrong-token", f"Basic {ADMIN_TOKEN}", ADMIN_TOKEN, "Bearer ", f"Bearer {ADMIN_TOKEN}x"])
def test_a_wrong_token_is_refused(client, app, header):
    response = client.post("/api/v1/consents", headers={"Authorization": header}, json=OPT_IN)
    assert response.status_code == 401 and events(app) == []


@sqlite_only
@pytest.mark.parametrize("method,path", ROUTES)
def test_every_endpoint_is_off_when_no_token_is_configured(client, app, method, path):
    reconfigure(app, admin_api_token=None)
    response = client.open(path, method=method, headers=AUTH, json=OPT_IN)
    assert response.status_code == 403
    assert "set ADMIN_API_TOKEN" in response.get_json()["detail"]


def test_the_openapi_document_is_served_without_a_token(client):
    document = client.get("/api/v1/openapi.json").get_json()
    assert document["openapi"] == "3.1.0" and "/consents" in document["paths"]


# -- consents --------------------------------------------------------------------------------


def test_recording_an_opt_in_returns_the_event_and_changes_the_state(client):
    response = client.post("/api/v1/consents", headers=AUTH, json=OPT_IN)
    assert response.status_code == 201
    event = response.get_json()
    assert (event["wa_id"], event["action"], event["channel"], event["basis"]) == (USER, "opt_in", "paper", "explicit")
    assert event["evidence"] == OPT_IN["evidence"] and event["recorded_by"] == "staff:api"
    state = client.get(f"/api/v1/consents/{USER}", headers=AUTH).get_json()
    assert (state["state"], state["marketing"], state["window_open_until"]) == ("opted_in", "allowed", None)
    assert [e["event_id"] for e in state["history"]] == [event["event_id"]]


def test_recording_an_opt_out_of_marketing_only(client):
    client.post("/api/v1/consents", headers=AUTH, json=OPT_IN)
    body = {"wa_id": USER, "action": "opt_out", "channel": "ivr", "scope": "marketing", "evidence": {"call": "C-7"}}
    assert client.post("/api/v1/consents", headers=AUTH, json=body).status_code == 201
    state = client.get(f"/api/v1/consents/{USER}", headers=AUTH).get_json()
    assert (state["state"], state["marketing"]) == ("opted_in", "opted_out")
    assert [e["action"] for e in state["history"]] == ["opt_in", "opt_out"]


@pytest.mark.parametrize("channel", ["whatsapp", "whatsapp_keyword"])
def test_a_whatsapp_opt_out_from_staff_is_refused_saying_where_whatsapp_opt_outs_come_from(client, app, channel):
    body = {"wa_id": USER, "action": "opt_out", "channel": channel, "evidence": {"call": "C-7"}}
    response = client.post("/api/v1/consents", headers=AUTH, json=body)
    assert response.status_code == 422
    error = response.get_json()
    assert (error["error"], error["field"]) == ("invalid_field", "channel")
    assert "the user's own messages (STOP" in error["detail"] and "under another channel, such as api" in error["detail"]
    assert "R5" not in error["detail"] and events(app) == []


def test_a_number_never_seen_has_state_none(client):
    state = client.get("/api/v1/consents/447700900123", headers=AUTH).get_json()
    assert (state["state"], state["marketing"], state["history"]) == ("none", "none", [])


@pytest.mark.parametrize(
    "change,field,says",
    [
        ({"channel": "whatsapp"}, "channel", "R5"),
        ({"channel": "whatsapp_keyword"}, "channel", "R5"),
        ({"channel": "carrier_pigeon"}, "channel", "must be one of"),
        ({"consent_text": None}, "consent_text", "non-empty string"),
        ({"consent_text": "   "}, "consent_text", "non-empty string"),
        ({"wa_id": "0650555123"}, "wa_id", "invalid phone number"),
        ({"wa_id": 16505551234}, "wa_id", "must be a string"),
        ({"action": "maybe"}, "action", "must be one of"),
        ({"scope": "everything"}, "scope", "must be one of"),
        ({"evidence": ["a", "list"]}, "evidence", "JSON object"),
        ({"occurred_at": "2026-11-24 10:00"}, "occurred_at", "time zone"),
        ({"occurred_at": "last tuesday"}, "occurred_at", "ISO 8601"),
        ({"occurred_at": 1732000000}, "occurred_at", "ISO 8601"),
        ({"occurred_at": "0001-01-01T00:00:00+14:00"}, "occurred_at", "years 1900 to 9999"),  # before year 1 in UTC
        ({"occurred_at": "1899-12-31T23:59:59Z"}, "occurred_at", "years 1900 to 9999"),
        ({"consent_txt": "typo"}, "consent_txt", "unknown field"),
    ],
)
def test_invalid_consents_are_refused_with_the_field_and_nothing_recorded(client, app, change, field, says):
    body = {**OPT_IN, **change}
    body = {key: value for key, value in body.items() if value is not None}
    response = client.post("/api/v1/consents", headers=AUTH, json=body)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()
    assert (error["error"], error["field"]) == ("invalid_field", field) and says in error["detail"]
    assert events(app) == []


@pytest.mark.parametrize(
    "change,says",
    [
        ({"evidence": {}}, "needs evidence"),
        ({"occurred_at": (utc_now() + timedelta(days=1)).isoformat()}, "future"),
        ({"evidence": {"n": float("nan")}}, None),
    ],
)
def test_the_ledgers_own_rules_answer_422(client, app, change, says):
    body = json.dumps({**OPT_IN, **change})  # NaN is not JSON: the body is refused before the ledger
    response = client.post("/api/v1/consents", headers={**AUTH, "Content-Type": "application/json"}, data=body)
    assert response.status_code in (400, 422)
    if says:
        assert response.status_code == 422 and says in response.get_json()["detail"]
    assert events(app) == []


@pytest.mark.parametrize("body", [b"", b"{not json", b"[1, 2", "\ud800".encode("utf-8", "surrogatepass"), b"[" * 100_000])
def test_bodies_that_are_not_json_answer_400(client, app, body):
    response = client.post("/api/v1/consents", headers=AUTH, data=body, content_type="application/json")
    assert response.status_code == 400 and response.get_json()["error"] == "malformed_json"
    assert events(app) == []


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"42", b"null"])
def test_json_that_is_not_an_object_answers_422(client, body):
    response = client.post("/api/v1/consents", headers=AUTH, data=body, content_type="application/json")
    assert response.status_code == 422 and "JSON object" in response.get_json()["detail"]


def test_an_oversized_body_answers_413(client, app):
    body = {**OPT_IN, "evidence": {"scan": "x" * (5 * 1024 * 1024)}}
    response = client.post("/api/v1/consents", headers=AUTH, json=body)
    assert response.status_code == 413 and response.get_json()["error"] == "request_entity_too_large"
    assert events(app) == []


def test_an_idempotency_key_records_once_and_refuses_reuse_for_another_event(client, app):
    headers = {**AUTH, "Idempotency-Key": "crm-import-77"}
    first = client.post("/api/v1/consents", headers=headers, json=OPT_IN).get_json()
    again = client.post("/api/v1/consents", headers=headers, json=OPT_IN).get_json()
    assert first["event_id"] == again["event_id"] and len(events(app)) == 1
    other = client.post("/api/v1/consents", headers=headers, json={**OPT_IN, "wa_id": OTHER_USER})
    assert other.status_code == 409 and other.get_json()["error"] == "idempotency_key_reused"


def test_state_of_an_invalid_number_answers_422(client):
    response = client.get("/api/v1/consents/12ab", headers=AUTH)
    assert response.status_code == 422 and response.get_json()["field"] == "wa_id"


# -- messages --------------------------------------------------------------------------------


def test_an_allowed_template_is_queued_and_shows_the_consent_that_allowed_it(client, app):
    opt_in = client.post("/api/v1/consents", headers=AUTH, json=OPT_IN).get_json()
    response = client.post("/api/v1/messages", headers=AUTH, json={"to": USER, "template": SPRING_SALE})
    assert response.status_code == 202
    sent = response.get_json()
    assert sent["status"] == "queued"
    state = client.get(f"/api/v1/messages/{sent['id']}", headers=AUTH).get_json()
    assert (state["state"], state["to"], state["kind"], state["error_code"]) == ("queued", USER, "marketing", None)
    assert state["consent_event"]["event_id"] == opt_in["event_id"]
    assert [job.args for job in Queue("replies", connection=services_of(app).redis).jobs] == [([sent["id"]],)]


@pytest.mark.parametrize(
    "setup,body,reason",
    [
        ([], {"to": USER, "template": SPRING_SALE}, "no_consent"),
        ([web_opt_in(), opt_out(ref="stop-9")], {"to": USER, "template": ORDER_UPDATE}, "opted_out"),
        ([web_opt_in(), opt_out(ref="mk-1", scope=Scope.MARKETING)], {"to": USER, "template": SPRING_SALE}, "marketing_opted_out"),
        ([web_opt_in()], {"to": USER, "text": "Hello from staff"}, "window_closed"),
        ([], {"to": "12ab", "template": ORDER_UPDATE}, "invalid_recipient"),
    ],
)
def test_each_refusal_answers_409_with_its_reason_and_queues_nothing(client, app, setup, body, reason):
    for draft in setup:
        services_of(app).ledger.append(draft)
    response = client.post("/api/v1/messages", headers=AUTH, json=body)
    assert response.status_code == 409
    refusal = response.get_json()
    assert (refusal["error"], refusal["reason"]) == ("not_allowed", reason) and reason in refusal["detail"]
    assert Queue("replies", connection=services_of(app).redis).count == 0
    if refusal["id"]:  # a refusal to a valid number is kept, for the audit
        assert client.get(f"/api/v1/messages/{refusal['id']}", headers=AUTH).get_json()["state"] == "blocked"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"to": USER}, "body"),
        ({"to": USER, "text": "hi", "template": SPRING_SALE}, "body"),
        ({"to": 16505551234, "text": "hi"}, "to"),
        ({"to": USER, "text": ""}, "text"),
        ({"to": USER, "text": "x" * 5000}, "text"),
        ({"to": USER, "template": {**SPRING_SALE, "category": "promo"}}, "category"),
        ({"to": USER, "template": {**SPRING_SALE, "name": "Spring Sale!"}}, "template.name"),
        ({"to": USER, "template": {**SPRING_SALE, "language": "english"}}, "template.language"),
        ({"to": USER, "template": {**SPRING_SALE, "components": "body"}}, "template.components"),
        ({"to": USER, "template": "spring_sale"}, "template"),
        ({"text": "hi"}, "to"),
    ],
)
def test_invalid_message_requests_answer_422_naming_the_field(client, app, body, field):
    response = client.post("/api/v1/messages", headers=AUTH, json=body)
    assert response.status_code == 422 and response.get_json()["field"] == field
    assert stored_messages(app) == []


SURROGATE_COMPONENTS = [{"type": "body", "parameters": [{"type": "text", "text": "x\ud800"}]}]


@pytest.mark.parametrize(
    "path,body,field",
    [
        ("/api/v1/consents", {**OPT_IN, "consent_text": "x\ud800"}, "consent_text"),
        ("/api/v1/consents", {**OPT_IN, "evidence": {"a": "\udc00"}}, "evidence"),
        ("/api/v1/consents", {**OPT_IN, "evidence": {"scans": [{"\udc00": 1}]}}, "evidence"),
        ("/api/v1/messages", {"to": USER, "text": "x\ud800"}, "text"),
        ("/api/v1/messages", {"to": USER, "template": {**ORDER_UPDATE, "components": SURROGATE_COMPONENTS}}, "template.components"),
        ("/api/v1/campaigns", {"template": {**ORDER_UPDATE, "components": SURROGATE_COMPONENTS}, "recipients": [USER]}, "template.components"),
    ],
)
def test_a_lone_surrogate_answers_422_naming_the_field_and_nothing_is_stored(client, app, path, body, field):
    """JSON may escape half a UTF-16 pair ("\\ud800"): no UTF-8 text can hold it, so no row or hash can either."""
    response = client.post(path, headers=AUTH, json=body)
    assert response.status_code == 422
    error = response.get_json()
    assert (error["error"], error["field"]) == ("invalid_field", field) and "valid Unicode" in error["detail"]
    assert events(app) == [] and stored_messages(app) == []


def test_an_unknown_message_id_answers_404(client):
    response = client.get("/api/v1/messages/not-a-message", headers=AUTH)
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"


def test_a_message_idempotency_key_queues_once(client, app):
    services_of(app).ledger.append(web_opt_in())
    headers = {**AUTH, "Idempotency-Key": "order-991-shipped"}
    ids = {client.post("/api/v1/messages", headers=headers, json={"to": USER, "template": ORDER_UPDATE}).get_json()["id"] for _ in range(3)}
    assert len(ids) == 1 and len(stored_messages(app)) == 1


def test_a_message_idempotency_key_reused_for_another_message_is_refused(client, app):
    services_of(app).ledger.append(web_opt_in())
    services_of(app).ledger.append(web_opt_in(OTHER_USER, ref="form-2"))
    headers = {**AUTH, "Idempotency-Key": "order-991-shipped"}
    first = client.post("/api/v1/messages", headers=headers, json={"to": USER, "template": ORDER_UPDATE})
    other = client.post("/api/v1/messages", headers=headers, json={"to": OTHER_USER, "template": ORDER_UPDATE})
    assert first.status_code == 202
    assert other.status_code == 409 and other.get_json()["error"] == "idempotency_key_reused"
    assert [wa_id for wa_id, _ in stored_messages(app)] == [USER]


# -- campaigns -------------------------------------------------------------------------------

CAMPAIGN_LIST = [USER, "+1 650 555 1234", OTHER_USER, "19175550100", "12ab", " "]


def opt_in_list(app) -> None:
    ledger = services_of(app).ledger
    ledger.append(web_opt_in(USER, ref="f-1"))
    ledger.append(web_opt_in(OTHER_USER, ref="f-2"))
    ledger.append(opt_out(OTHER_USER, ref="s-2"))


def test_a_dry_run_counts_and_queues_nothing(client, app):
    opt_in_list(app)
    response = client.post("/api/v1/campaigns", headers=AUTH, json={"template": SPRING_SALE, "recipients": CAMPAIGN_LIST, "dry_run": True})
    assert response.status_code == 200
    assert response.get_json() == {
        "dry_run": True, "campaign_id": None, "queued": 1, "duplicates": 1, "blank": 1,
        "skipped": {"opted_out": 1, "no_consent": 1, "invalid_recipient": 1},
    }
    assert stored_messages(app) == [] and Queue("bulk", connection=services_of(app).redis).count == 0


def test_a_campaign_queues_the_allowed_and_reports_progress(client, app):
    opt_in_list(app)
    response = client.post("/api/v1/campaigns", headers=AUTH, json={"template": SPRING_SALE, "recipients": CAMPAIGN_LIST})
    assert response.status_code == 202
    result = response.get_json()
    assert (result["queued"], result["skipped"], result["duplicates"]) == (1, {"opted_out": 1, "no_consent": 1, "invalid_recipient": 1}, 1)
    progress = client.get(f"/api/v1/campaigns/{result['campaign_id']}", headers=AUTH).get_json()
    assert (progress["status"], progress["queued"], progress["blocked"], progress["sent"], progress["opt_outs"]) == ("running", 1, 2, 0, 0)
    assert progress["template"]["name"] == "spring_sale" and progress["recipients"] == 3
    # What the start answered stays in the progress: every entry of the list is accounted for.
    assert (progress["listed"], progress["skipped"], progress["duplicates"], progress["blank"]) == (
        len(CAMPAIGN_LIST), result["skipped"], result["duplicates"], result["blank"])
    jobs = Queue("bulk", connection=services_of(app).redis).jobs
    assert sum(len(job.args[0]) for job in jobs) == 1


def test_a_campaign_sent_again_with_its_key_adds_nothing(client, app):
    opt_in_list(app)
    headers = {**AUTH, "Idempotency-Key": "spring-2026"}
    first = client.post("/api/v1/campaigns", headers=headers, json={"template": SPRING_SALE, "recipients": CAMPAIGN_LIST}).get_json()
    again = client.post("/api/v1/campaigns", headers=headers, json={"template": SPRING_SALE, "recipients": CAMPAIGN_LIST}).get_json()
    assert first["campaign_id"] == again["campaign_id"] and len(stored_messages(app)) == 3
    assert sum(len(job.args[0]) for job in Queue("bulk", connection=services_of(app).redis).jobs) == 1


def test_a_campaign_key_reused_for_another_template_or_list_is_refused_and_queues_nothing(client, app):
    opt_in_list(app)
    headers = {**AUTH, "Idempotency-Key": "spring-2026"}
    assert client.post("/api/v1/campaigns", headers=headers, json={"template": SPRING_SALE, "recipients": [USER]}).status_code == 202
    for body in ({"template": {**SPRING_SALE, "name": "summer_sale"}, "recipients": [USER]},
                 {"template": SPRING_SALE, "recipients": [USER, OTHER_USER]}):
        response = client.post("/api/v1/campaigns", headers=headers, json=body)
        assert response.status_code == 409 and response.get_json()["error"] == "idempotency_key_reused"
    assert len(stored_messages(app)) == 1


@pytest.mark.parametrize(
    "body,field",
    [
        ({"template": SPRING_SALE, "recipients": []}, "recipients"),
        ({"template": SPRING_SALE, "recipients": USER}, "recipients"),
        ({"template": SPRING_SALE, "recipients": [16505551234]}, "recipients"),
        ({"template": SPRING_SALE, "recipients": [USER], "dry_run": "yes"}, "dry_run"),
        ({"recipients": [USER]}, "template"),
    ],
)
def test_invalid_campaigns_answer_422(client, app, body, field):
    response = client.post("/api/v1/campaigns", headers=AUTH, json=body)
    assert response.status_code == 422 and response.get_json()["field"] == field
    assert stored_messages(app) == []


def test_an_unknown_campaign_answers_404(client):
    for method, path in [("GET", "/api/v1/campaigns/nope"), ("POST", "/api/v1/campaigns/nope/pause"), ("POST", "/api/v1/campaigns/nope/resume")]:
        assert client.open(path, method=method, headers=AUTH).status_code == 404


def test_staff_pause_and_resume_a_campaign(client, app):
    opt_in_list(app)
    campaign_id = client.post("/api/v1/campaigns", headers=AUTH, json={"template": SPRING_SALE, "recipients": CAMPAIGN_LIST}).get_json()["campaign_id"]
    paused = client.post(f"/api/v1/campaigns/{campaign_id}/pause", headers=AUTH).get_json()
    assert (paused["status"], paused["pause_reason"]) == ("paused", "paused by staff:api")
    Queue("bulk", connection=services_of(app).redis).empty()
    resumed = client.post(f"/api/v1/campaigns/{campaign_id}/resume", headers=AUTH).get_json()
    assert (resumed["status"], resumed["pause_reason"]) == ("running", None)
    # Resuming queues the waiting messages again.
    assert sum(len(job.args[0]) for job in Queue("bulk", connection=services_of(app).redis).jobs) == 1


def test_a_finished_campaign_cannot_be_paused(client, app):
    """Finished: nothing of it is left queued (here every recipient was refused at the start)."""
    body = {"template": SPRING_SALE, "recipients": ["19175550100"]}
    campaign_id = client.post("/api/v1/campaigns", headers=AUTH, json=body).get_json()["campaign_id"]
    response = client.post(f"/api/v1/campaigns/{campaign_id}/pause", headers=AUTH)
    assert response.status_code == 409
    assert response.get_json() == {
        "error": "not_allowed",
        "detail": f"campaign {campaign_id} is finished: none of its messages is left to send, so there is nothing to pause",
    }
    progress = client.get(f"/api/v1/campaigns/{campaign_id}", headers=AUTH).get_json()
    assert (progress["status"], progress["pause_reason"]) == ("finished", None)


# -- audit -----------------------------------------------------------------------------------


def test_the_audit_export_streams_csv_and_jsonl_with_filters(client, app, clock):
    ledger = services_of(app).ledger
    ledger.append(web_opt_in(USER, ref="f-1", occurred_at=clock() - timedelta(days=3)))
    ledger.append(web_opt_in(OTHER_USER, ref="f-2", occurred_at=clock() - timedelta(days=1)))
    ledger.append(opt_out(USER, ref="s-1"))
    response = client.get("/api/v1/audit", headers=AUTH)
    assert response.status_code == 200 and response.mimetype == "text/csv" and response.is_streamed
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [(row["wa_id"], row["action"]) for row in rows] == [(USER, "opt_in"), (OTHER_USER, "opt_in"), (USER, "opt_out")]
    assert json.loads(rows[0]["evidence"]) == {"form": "signup", "ip": "203.0.113.9"}
    jsonl = client.get(f"/api/v1/audit?format=jsonl&wa_id=%2B{USER}", headers=AUTH)
    assert [json.loads(line)["action"] for line in jsonl.get_data(as_text=True).splitlines()] == ["opt_in", "opt_out"]
    since = (clock() - timedelta(days=2)).isoformat().replace("+00:00", "Z")
    recent = client.get("/api/v1/audit", headers=AUTH, query_string={"format": "jsonl", "since": since})
    assert [json.loads(line)["wa_id"] for line in recent.get_data(as_text=True).splitlines()] == [OTHER_USER, USER]


@pytest.mark.parametrize("fmt,content_type", [("csv", "text/csv; charset=utf-8"), ("jsonl", "application/x-ndjson; charset=utf-8")])
def test_the_audit_export_names_its_charset_once(client, fmt, content_type):
    response = client.get(f"/api/v1/audit?format={fmt}", headers=AUTH)
    assert response.status_code == 200 and response.headers["Content-Type"] == content_type


@pytest.mark.parametrize(
    "query,field",
    [
        ("format=xml", "format"), ("since=yesterday", "since"), ("until=2026-01-01", "until"), ("wa_id=abc", "wa_id"),
        ("since=0001-01-01T00:00:00%2B14:00", "since"), ("until=9999-12-31T23:59:59-14:00", "until"),  # out of range in UTC
    ],
)
def test_bad_audit_parameters_answer_422(client, query, field):
    response = client.get(f"/api/v1/audit?{query}", headers=AUTH)
    assert response.status_code == 422 and response.get_json()["field"] == field


def test_an_opt_out_recorded_through_the_api_blocks_queued_sends(client, app):
    """R7 through the staff surface: the opt-out is in the ledger, so the next decision refuses."""
    client.post("/api/v1/consents", headers=AUTH, json=OPT_IN)
    client.post("/api/v1/consents", headers=AUTH, json={"wa_id": USER, "action": "opt_out", "channel": "email", "evidence": {"mail": "M-1"}})
    assert [a for a, _ in events(app)] == [Action.OPT_IN.value, Action.OPT_OUT.value]
    response = client.post("/api/v1/messages", headers=AUTH, json={"to": USER, "template": ORDER_UPDATE})
    assert response.get_json()["reason"] == "opted_out"


def test_an_opt_out_is_recorded_and_answered_201_while_redis_is_down(app_without_redis):
    """Its mark for the send threads (bot.outbound.opt_out_marks) cannot be set; the opt-out stands."""
    down = app_without_redis
    body = {"wa_id": USER, "action": "opt_out", "channel": "email", "evidence": {"mail": "M-1"}}
    response = down.test_client().post("/api/v1/consents", headers=AUTH, json=body)
    assert response.status_code == 201 and response.get_json()["action"] == "opt_out"
    assert services_of(down).ledger.state(USER).state.value == "opted_out"
