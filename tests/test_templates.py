"""Meta's template catalog decides a template's category and whether it may be sent (SPEC §7)."""
from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from bot import create_app
from bot.domain.consent import Scope
from bot.outbound.graph_errors import TransientError
from bot.outbound.worker import SYNC_RETRY_SECONDS, TEMPLATE_SYNC_LOCK, sync_templates_when_due
from bot.services import services_of, sync_templates, warn_without_catalog
from bot.storage.db import writer
from bot.storage.outbox import Template
from bot.storage.schema import account_notices, message_templates, outbound_messages
from bot.storage.templates import CatalogTemplate, SyncFailed
from sandbox.graph_imitation import SAMPLE_TEMPLATES
from tests.conftest import app_config
from tests.helpers import OTHER_USER, USER, opt_out, web_opt_in
from tests.test_identities import send_queued
from tests.test_staff_api import AUTH
from tests.test_webhook import kept_notices, notice_body, post, status_body

WABA_ID = "102290129340398"


@pytest.fixture
def waba_app(database_url, redis_url, graph):
    """An app with WHATSAPP_BUSINESS_ACCOUNT_ID: template sends are decided on Meta's catalog,
    which the imitation serves two templates a page."""
    graph.templates = [*SAMPLE_TEMPLATES, {**SAMPLE_TEMPLATES[0], "name": "order_update", "language": "es"}]
    app = create_app(app_config(database_url, redis_url, graph, WHATSAPP_BUSINESS_ACCOUNT_ID=WABA_ID))
    yield app
    services_of(app).dispose()


def catalog(app) -> dict[tuple[str, str], tuple[str, str]]:
    return {(t.name, t.language): (t.category, t.status) for t in services_of(app).templates.all()}


def test_sync_follows_the_pages_to_the_end(waba_app):
    assert sync_templates(services_of(waba_app)) == 5  # three pages of two
    assert catalog(waba_app) == {
        ("order_update", "en_US"): ("UTILITY", "APPROVED"), ("order_update", "es"): ("UTILITY", "APPROVED"),
        ("spring_sale", "en_US"): ("MARKETING", "APPROVED"), ("login_code", "en_US"): ("AUTHENTICATION", "APPROVED"),
        ("winter_sale", "en_US"): ("MARKETING", "PAUSED"),
    }


def test_a_failed_sync_keeps_the_last_good_catalog(waba_app, graph):
    sync_templates(services_of(waba_app))
    before = catalog(waba_app)
    graph.templates_error = 190
    with pytest.raises(SyncFailed, match="could not be read"):
        sync_templates(services_of(waba_app))

    def cut_short():
        yield [{"name": "only_one", "language": "en_US", "status": "APPROVED", "category": "UTILITY"}]
        raise TransientError("cannot reach the Cloud API")

    with pytest.raises(SyncFailed, match="cannot reach"):
        services_of(waba_app).templates.sync(cut_short())
    assert catalog(waba_app) == before


def test_a_sync_drops_templates_meta_no_longer_lists(waba_app, graph):
    sync_templates(services_of(waba_app))
    graph.templates = SAMPLE_TEMPLATES[:1]
    sync_templates(services_of(waba_app))
    assert catalog(waba_app) == {("order_update", "en_US"): ("UTILITY", "APPROVED")}


def test_one_worker_syncs_per_period_and_each_at_its_start(waba_app):
    services = services_of(waba_app)
    assert sync_templates_when_due(services, services.redis, 3600) == 5
    assert sync_templates_when_due(services, services.redis, 3600) is None  # another worker's turn was taken
    assert sync_templates_when_due(services, services.redis, 3600, force=True) == 5


def test_a_failed_sync_is_tried_again_soon_not_a_period_later(waba_app, graph):
    services = services_of(waba_app)
    graph.templates_error = 190  # Meta does not answer as the worker starts
    with pytest.raises(SyncFailed):
        sync_templates_when_due(services, services.redis, 3600, force=True)
    assert 0 < services.redis.ttl(TEMPLATE_SYNC_LOCK) <= SYNC_RETRY_SECONDS
    graph.templates_error = None
    services.redis.delete(TEMPLATE_SYNC_LOCK)  # SYNC_RETRY_SECONDS later
    assert sync_templates_when_due(services, services.redis, 3600) == 5
    assert services.redis.ttl(TEMPLATE_SYNC_LOCK) > 3000


def test_without_an_account_id_a_process_says_so_at_start(app, waba_app, caplog):
    warn_without_catalog(services_of(waba_app).settings)
    assert caplog.messages == []
    warn_without_catalog(services_of(app).settings)
    assert caplog.messages == ["WHATSAPP_BUSINESS_ACCOUNT_ID is not set: template sends are decided on the category their sender gives, not on Meta's"]


def test_without_an_account_id_there_is_nothing_to_sync(app):
    with pytest.raises(SyncFailed, match="WHATSAPP_BUSINESS_ACCOUNT_ID"):
        sync_templates(services_of(app))
    assert sync_templates_when_due(services_of(app), services_of(app).redis, 3600) is None


def test_cli_syncs_and_lists_the_catalog(waba_app, graph):
    runner = waba_app.test_cli_runner()
    result = runner.invoke(args=["templates", "sync"])
    assert result.exit_code == 0, result.output
    assert "synced 5 template(s)" in result.output
    listed = runner.invoke(args=["templates", "list"]).output.splitlines()
    assert listed[0].split() == ["NAME", "LANGUAGE", "CATEGORY", "STATUS", "QUALITY", "SYNCED"]
    assert listed[1].split()[:5] == ["login_code", "en_US", "authentication", "APPROVED", "GREEN"]
    assert any(line.split()[:4] == ["winter_sale", "en_US", "marketing", "PAUSED"] for line in listed)
    graph.templates_error = 190
    failed = runner.invoke(args=["templates", "sync"])
    assert failed.exit_code == 1 and "could not be read" in failed.output


@pytest.fixture
def synced(waba_app):
    """The app with its catalog synced, USER opted in but stopped marketing, OTHER_USER opted in."""
    services = services_of(waba_app)
    sync_templates(services)
    services.ledger.append(web_opt_in(USER, ref="form-1"))
    services.ledger.append(opt_out(USER, ref="stop-promotions-1", scope=Scope.MARKETING))
    services.ledger.append(web_opt_in(OTHER_USER, ref="form-2"))
    return waba_app


def body_parameters(*texts: str) -> list[dict]:
    return [{"type": "body", "parameters": [{"type": "text", "text": text} for text in texts]}]


# What each sample template's body asks for, as a send gives it.
PARAMETERS = {"order_update": body_parameters("A-1042", "on its way"), "login_code": body_parameters("482913")}


def send(app, name: str, category: str, to: str = USER, language: str = "en_US", components: list | None = None):
    components = PARAMETERS.get(name, []) if components is None else components
    body = {"to": to, "template": {"name": name, "language": language, "category": category, "components": components}}
    return app.test_client().post("/api/v1/messages", headers=AUTH, json=body)


def test_a_marketing_template_sent_as_utility_is_decided_as_marketing(synced):
    refused = send(synced, "spring_sale", "utility")
    assert refused.status_code == 409
    assert refused.get_json() | {"id": None, "detail": None} == {
        "error": "not_allowed", "reason": "marketing_opted_out", "category": "marketing", "category_claimed": "utility",
        "id": None, "detail": None,
    }
    allowed = send(synced, "spring_sale", "utility", to=OTHER_USER)
    assert allowed.status_code == 202
    assert (allowed.get_json()["category"], allowed.get_json()["category_claimed"]) == ("marketing", "utility")
    assert services_of(synced).outbox.get(allowed.get_json()["id"]).kind.value == "marketing"


def test_a_utility_template_sent_as_such_is_allowed_without_a_note(synced):
    answer = send(synced, "order_update", "utility")
    assert answer.status_code == 202
    assert answer.get_json()["category"] == "utility" and "category_claimed" not in answer.get_json()


@pytest.mark.parametrize(("name", "language", "reason"), [
    ("no_such_template", "en_US", "template_unknown"),
    ("order_update", "fr", "template_unknown"),  # the name is known, not in this language
    ("winter_sale", "en_US", "template_not_approved"),  # Meta paused it
])
def test_templates_meta_does_not_list_as_approved_are_refused(synced, name, language, reason):
    answer = send(synced, name, "marketing", to=OTHER_USER, language=language)
    assert answer.status_code == 409 and answer.get_json()["reason"] == reason
    campaign = synced.test_client().post("/api/v1/campaigns", headers=AUTH, json={
        "template": {"name": name, "language": language, "category": "marketing"}, "recipients": [OTHER_USER],
    })
    assert campaign.status_code == 409 and campaign.get_json()["reason"] == reason
    cli = synced.test_cli_runner().invoke(args=["send", "template", name, "--to", OTHER_USER, "--language", language, "--category", "marketing"])
    assert cli.exit_code == 1 and f"not sent: {reason}" in cli.output


def test_a_campaign_is_decided_on_meta_s_category(synced):
    answer = synced.test_client().post("/api/v1/campaigns", headers=AUTH, json={
        "template": {"name": "spring_sale", "language": "en_US", "category": "utility"}, "recipients": [USER, OTHER_USER],
    })
    assert answer.status_code == 202
    result = answer.get_json()
    assert (result["queued"], result["skipped"]) == (1, {"marketing_opted_out": 1})
    assert (result["category"], result["category_claimed"]) == ("marketing", "utility")
    assert services_of(synced).campaigns.progress(result["campaign_id"]).category == "marketing"


def set_category(app, name: str, category: str) -> None:
    with writer(services_of(app).engine).begin() as conn:
        services_of(app).templates.update(conn, name, "en_US", category=category)


def test_a_queued_template_is_decided_on_its_category_at_send_time(synced):
    assert send(synced, "order_update", "utility").status_code == 202
    set_category(synced, "order_update", "MARKETING")
    [message] = send_queued(synced)
    assert (message.state.value, message.reason) == ("blocked", "marketing_opted_out")


def test_without_an_account_id_the_caller_s_category_decides(app):
    services_of(app).ledger.append(web_opt_in(USER, ref="form-1"))
    services_of(app).ledger.append(opt_out(USER, ref="stop-promotions-1", scope=Scope.MARKETING))
    answer = send(app, "spring_sale", "utility")
    assert answer.status_code == 202 and "category" not in answer.get_json()
    [message] = send_queued(app)
    assert message.state.value == "sent"


def template_notice(field: str, at: float | None = None, **value: object) -> dict:
    body = notice_body(field, {"message_template_id": 594425479261596, "message_template_language": "en_US", **value})
    body["entry"][0]["time"] = int(at if at is not None else time.time())
    return body


def test_a_completed_category_change_decides_sends_from_then_on_even_those_queued(synced):
    client = synced.test_client()
    assert send(synced, "order_update", "utility").status_code == 202  # queued while still utility
    announced = template_notice(
        "template_category_update", message_template_name="order_update", correct_category="MARKETING", new_category="UTILITY",
        category_update_timestamp=int(time.time()) + 86400,
    )
    assert post(client, announced).status_code == 200
    assert catalog(synced)[("order_update", "en_US")] == ("UTILITY", "APPROVED")  # announced only: nothing changes yet
    completed = template_notice(
        "template_category_update", message_template_name="order_update", previous_category="UTILITY", new_category="MARKETING",
    )
    assert post(client, completed).status_code == 200
    assert catalog(synced)[("order_update", "en_US")] == ("MARKETING", "APPROVED")
    [message] = send_queued(synced)
    assert (message.state.value, message.reason) == ("blocked", "marketing_opted_out")
    refused = send(synced, "order_update", "utility")
    assert (refused.status_code, refused.get_json()["reason"], refused.get_json()["category"]) == (409, "marketing_opted_out", "marketing")
    assert [field for field, _ in kept_notices(synced)] == ["template_category_update", "template_category_update"]


def test_a_change_another_process_made_decides_sends_within_a_second(synced, monkeypatch):
    """The send loop decides on its process's copy of the catalog, trusted FRESH_FOR seconds."""
    monkeypatch.setattr("bot.storage.templates.FRESH_FOR", 0.2)
    outbox = services_of(synced).outbox
    assert outbox.template_verdict(Template("order_update", "en_US")).value == "utility"
    with writer(services_of(synced).engine).begin() as conn:  # as a webhook in the web process would
        conn.execute(sa.update(message_templates).where(message_templates.c.name == "order_update").values(category="MARKETING"))
    assert outbox.template_verdict(Template("order_update", "en_US")).value == "utility"
    time.sleep(0.25)
    assert outbox.template_verdict(Template("order_update", "en_US")).value == "marketing"


def test_status_updates_change_the_catalog(synced):
    client = synced.test_client()
    paused = template_notice("message_template_status_update", message_template_name="order_update", event="PAUSED", reason="LOW_QUALITY")
    assert post(client, paused).status_code == 200
    assert catalog(synced)[("order_update", "en_US")] == ("UTILITY", "PAUSED")
    assert send(synced, "order_update", "utility", to=OTHER_USER).get_json()["reason"] == "template_not_approved"
    reinstated = template_notice("message_template_status_update", at=time.time() + 1, message_template_name="order_update", event="REINSTATED")
    assert post(client, reinstated).status_code == 200
    assert catalog(synced)[("order_update", "en_US")] == ("UTILITY", "APPROVED")


def test_a_change_from_before_the_last_sync_changes_nothing(synced):
    late = template_notice("message_template_status_update", at=time.time() - 3600, message_template_name="spring_sale", event="DISABLED")
    assert post(synced.test_client(), late).status_code == 200
    assert catalog(synced)[("spring_sale", "en_US")] == ("MARKETING", "APPROVED")


def test_the_api_lists_the_catalog(waba_app):
    client = waba_app.test_client()
    assert client.get("/api/v1/templates", headers=AUTH).get_json() == []
    sync_templates(services_of(waba_app))
    listed = client.get("/api/v1/templates", headers=AUTH).get_json()
    assert [(t["name"], t["language"], t["category"], t["status"]) for t in listed] == [
        ("login_code", "en_US", "authentication", "APPROVED"), ("order_update", "en_US", "utility", "APPROVED"),
        ("order_update", "es", "utility", "APPROVED"), ("spring_sale", "en_US", "marketing", "APPROVED"),
        ("winter_sale", "en_US", "marketing", "PAUSED"),
    ]
    assert listed[0]["quality"] == "GREEN" and listed[0]["components"][0]["type"] == "BODY"
    assert client.get("/api/v1/templates").status_code == 401


def test_the_cli_notes_meta_s_category_and_decides_on_it(synced, tmp_path):
    runner = synced.test_cli_runner()
    refused = runner.invoke(args=["send", "template", "spring_sale", "--to", USER, "--category", "utility"])
    assert refused.exit_code == 1
    assert "note: Meta files spring_sale (en_US) as marketing, not utility" in refused.output and "not sent: marketing_opted_out" in refused.output
    numbers = tmp_path / "list.csv"
    numbers.write_text(f"wa_id\n{USER}\n{OTHER_USER}\n")
    campaign = runner.invoke(args=["campaign", "send", "spring_sale", "--recipients", str(numbers), "--category", "utility"])
    assert campaign.exit_code == 0, campaign.output
    assert "as marketing, not utility" in campaign.output and "1 queued, skipped: marketing_opted_out 1" in campaign.output


# -- parameters ------------------------------------------------------------------------------


def test_a_wrong_parameter_count_is_refused_before_anything_is_queued(synced):
    one_short = send(synced, "order_update", "utility", to=OTHER_USER, components=body_parameters("A-1042"))
    assert one_short.status_code == 422
    assert one_short.get_json() == {
        "error": "invalid_field", "field": "template.components",
        "detail": "template.components: template order_update (en_US) takes 2 body parameter(s), 1 given",
    }
    header = [{"type": "header", "parameters": [{"type": "text", "text": "Hi"}]}, *PARAMETERS["order_update"]]
    assert send(synced, "order_update", "utility", to=OTHER_USER, components=header).get_json()["detail"] == (
        "template.components: template order_update (en_US) takes 0 header parameter(s), 1 given"
    )
    assert send(synced, "spring_sale", "marketing", to=OTHER_USER, components=body_parameters("extra")).status_code == 422
    campaign = synced.test_client().post("/api/v1/campaigns", headers=AUTH, json={
        "template": {"name": "order_update", "language": "en_US", "category": "utility"}, "recipients": [OTHER_USER], "dry_run": True,
    })
    assert campaign.status_code == 422 and campaign.get_json()["detail"].endswith("takes 2 body parameter(s), 0 given")
    cli = synced.test_cli_runner().invoke(args=["send", "template", "login_code", "--to", OTHER_USER, "--category", "authentication"])
    assert cli.exit_code == 1 and "template login_code (en_US) takes 1 body parameter(s), 0 given" in cli.output
    with services_of(synced).engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(outbound_messages)).scalar_one() == 0
    assert send(synced, "order_update", "utility", to=OTHER_USER).status_code == 202


def test_without_an_account_id_parameters_are_not_counted(app):
    services_of(app).ledger.append(web_opt_in(USER, ref="form-1"))
    assert send(app, "order_update", "utility", components=[]).status_code == 202  # no catalog to count against


def catalog_entry(*components: dict) -> CatalogTemplate:
    return CatalogTemplate("welcome", "en_US", "APPROVED", "UTILITY", None, list(components), datetime.now(UTC))


@pytest.mark.parametrize(("components", "given", "mismatch"), [
    ([{"type": "BODY", "text": "Hi {{first_name}}, {{first_name}}: order {{ order }}"}], body_parameters("Ana", "A-1"), None),
    ([{"type": "HEADER", "format": "IMAGE"}, {"type": "BODY", "text": "No variables"}], [{"type": "header", "parameters": [{"type": "image"}]}], None),
    ([{"type": "HEADER", "format": "TEXT", "text": "Hello {{1}}"}], [], "takes 1 header parameter(s), 0 given"),
    ([{"type": "BODY", "text": "{{1}} and {{2}}"}, {"type": "FOOTER", "text": "{{9}}"}], body_parameters("a", "b"), None),
    ([{"type": "BODY", "text": "{{1}}"}], body_parameters("a", "b"), "takes 1 body parameter(s), 2 given"),
])
def test_parameters_are_counted_as_meta_counts_them(components, given, mismatch):
    found = catalog_entry(*components).parameter_mismatch(given)
    assert found == (f"template welcome (en_US) {mismatch}" if mismatch else None)


# -- what Meta bills -------------------------------------------------------------------------


def status_with_pricing(meta_id: str, category: str, recipient: str = OTHER_USER, status: str = "sent") -> dict:
    body, _ = status_body("status_sent.json")
    [item] = body["entry"][0]["changes"][0]["value"]["statuses"]
    item.update(id=meta_id, status=status, recipient_id=recipient, timestamp=str(int(time.time())))
    item["pricing"]["category"] = category
    return body


def billed(app, message_id: str) -> tuple:
    with services_of(app).engine.connect() as conn:
        columns = (outbound_messages.c.billed_category, outbound_messages.c.billed_type, outbound_messages.c.billable, outbound_messages.c.kind)
        return tuple(conn.execute(sa.select(*columns).where(outbound_messages.c.id == message_id)).one())


def discrepancies(app) -> list[dict]:
    with services_of(app).engine.connect() as conn:
        rows = conn.execute(sa.select(account_notices.c.details).where(account_notices.c.field == "billing_discrepancy"))
        return [json.loads(details) for (details,) in rows]


def sent_template(app, name: str, category: str) -> tuple[str, str]:
    answer = send(app, name, category, to=OTHER_USER)
    assert answer.status_code == 202, answer.get_json()
    [message] = send_queued(app)
    assert message.state.value == "sent"
    return message.id, message.meta_message_id


def test_what_meta_bills_is_recorded_per_message(synced):
    message_id, meta_id = sent_template(synced, "order_update", "utility")
    assert post(synced.test_client(), status_with_pricing(meta_id, "utility")).status_code == 200
    assert billed(synced, message_id) == ("utility", "regular", True, "utility")
    assert discrepancies(synced) == []


def test_a_message_billed_as_marketing_but_decided_otherwise_is_kept_for_staff(synced, caplog):
    message_id, meta_id = sent_template(synced, "order_update", "utility")
    client = synced.test_client()
    for status in ("sent", "delivered", "sent"):  # redelivered, and a later status saying the same
        assert post(client, status_with_pricing(meta_id, "marketing", status=status)).status_code == 200
    assert billed(synced, message_id) == ("marketing", "regular", True, "utility")
    assert discrepancies(synced) == [{
        "message_id": message_id, "meta_message_id": meta_id, "decided_as": "utility", "billed_as": "marketing",
        "template": ["order_update", "en_US"], "campaign_id": None,
    }]
    assert [m for m in caplog.messages if "billed by Meta" in m] == [f"message {message_id} billed by Meta as marketing, decided as utility"]


def test_billing_is_compared_with_the_category_the_send_was_decided_on(synced):
    """Meta moved the template to marketing between queueing and sending: the send was decided
    (and allowed) as marketing, so Meta billing it as marketing is no discrepancy."""
    assert send(synced, "order_update", "utility", to=OTHER_USER).status_code == 202
    set_category(synced, "order_update", "MARKETING")
    [message] = send_queued(synced)
    assert (message.state.value, message.kind.value) == ("sent", "marketing")
    assert post(synced.test_client(), status_with_pricing(message.meta_message_id, "marketing")).status_code == 200
    assert discrepancies(synced) == []


def test_a_quality_update_changes_the_catalog(synced):
    rated = template_notice(
        "message_template_quality_update", message_template_name="spring_sale", previous_quality_score="GREEN", new_quality_score="RED",
    )
    assert post(synced.test_client(), rated).status_code == 200
    listed = {(t["name"], t["language"]): t["quality"] for t in synced.test_client().get("/api/v1/templates", headers=AUTH).get_json()}
    assert listed[("spring_sale", "en_US")] == "RED" and listed[("order_update", "en_US")] == "GREEN"


# -- health ----------------------------------------------------------------------------------


def test_health_tells_the_catalog_s_state_without_failing_for_it(waba_app, graph):
    client = waba_app.test_client()
    empty = client.get("/healthz")
    assert empty.status_code == 200 and "catalog is empty" in empty.get_json()["detail"]
    sync_templates(services_of(waba_app))
    healthy = client.get("/healthz").get_json()
    assert "detail" not in healthy and healthy["templates"]["count"] == 5 and healthy["templates"]["last_sync_failure"] is None
    graph.templates_error = 190
    with pytest.raises(SyncFailed):
        sync_templates(services_of(waba_app))
    stale = client.get("/healthz")
    assert stale.status_code == 200 and stale.get_json()["status"] == "ok"
    detail = stale.get_json()["detail"]
    assert "failed (the template catalog could not be read" in detail and "deciding on the last good one: 5 template(s) read" in detail
    graph.templates_error = None
    sync_templates(services_of(waba_app))
    assert "detail" not in client.get("/healthz").get_json()


def test_health_says_nothing_of_templates_without_an_account_id(client):
    assert client.get("/healthz").get_json() == {"status": "ok", "database": "ok", "redis": "ok"}


# -- a large campaign ------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_campaign_of_ten_thousand_takes_no_catalog_call_beyond_one_sync(synced, graph):
    """Decisions read the catalog kept in the database, never Meta's: at submission for the
    whole list in one read, and at send time once per wave of messages claimed.
    (bench/send_throughput.py counts the catalog calls of whole campaigns sent by worker processes.)"""
    calls_for_one_sync = graph.catalog_calls
    assert calls_for_one_sync == 3  # five templates, two a page
    recipients = [f"1555{n:07d}" for n in range(10_000)]
    services_of(synced).ledger.append_many(web_opt_in(number, ref=f"form-{number}") for number in recipients)
    answer = synced.test_client().post("/api/v1/campaigns", headers=AUTH, json={
        "template": {"name": "spring_sale", "language": "en_US", "category": "utility"}, "recipients": recipients,
    })
    assert answer.status_code == 202 and answer.get_json()["queued"] == 10_000
    sent = send_queued(synced, limit=50)
    assert [message.state.value for message in sent] == ["sent"] * 50
    assert graph.catalog_calls == calls_for_one_sync
