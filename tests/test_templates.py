"""Meta's template catalog decides a template's category and whether it may be sent (SPEC §7)."""
from __future__ import annotations

import pytest

from bot import create_app
from bot.outbound.graph_errors import TransientError
from bot.outbound.worker import sync_templates_when_due
from bot.services import services_of, sync_templates
from bot.storage.templates import SyncFailed
from sandbox.graph_imitation import SAMPLE_TEMPLATES
from tests.conftest import app_config

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
