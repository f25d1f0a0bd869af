"""Meta's template catalog decides a template's category and whether it may be sent (SPEC §7)."""
from __future__ import annotations

import time

import pytest

from bot import create_app
from bot.domain.consent import Scope
from bot.outbound.graph_errors import TransientError
from bot.outbound.worker import sync_templates_when_due
from bot.services import services_of, sync_templates, warn_without_catalog
from bot.storage.db import writer
from bot.storage.templates import SyncFailed
from sandbox.graph_imitation import SAMPLE_TEMPLATES
from tests.conftest import app_config
from tests.helpers import OTHER_USER, USER, opt_out, web_opt_in
from tests.test_identities import send_queued
from tests.test_staff_api import AUTH
from tests.test_webhook import kept_notices, notice_body, post

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


def send(app, name: str, category: str, to: str = USER, language: str = "en_US"):
    body = {"to": to, "template": {"name": name, "language": language, "category": category}}
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
