"""The console's Templates, Account health and Audit pages (SPEC §8) on both databases: the
catalog with its text and what may not be sent, the number's standing as Meta last reported it,
unread webhook items inspected (escaped) and marked handled by operators only, the export the
staff API gives, and a chain check that names tampering; then all three in headless Chromium."""
from __future__ import annotations

import json
import re
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from bot import create_app
from bot.domain.staff import Role
from bot.services import services_of, sync_templates
from bot.storage.ledger import utc_now
from bot.storage.schema import consent_events, unread_webhooks
from tests.browser import screenshot, sign_in_to_console
from tests.conftest import app_config
from tests.helpers import OTHER_USER, USER, opt_out, reconfigure, web_opt_in
from tests.test_console_auth import page_text, post_form, sign_in
from tests.test_integrity import attacker
from tests.test_staff_accounts import PASSWORD, add_staff
from tests.test_staff_api import AUTH
from tests.test_webhook import payload, post

WABA_ID = "102290129340398"
ORDER_READY = {  # a template with every part: header, body, footer and buttons
    "name": "order_ready", "language": "en_US", "status": "APPROVED", "category": "UTILITY", "id": "594425479000999",
    "components": [
        {"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"},
        {"type": "BODY", "text": "Hello {{1}}, your order is ready.\nCollect it today."},
        {"type": "FOOTER", "text": "Acme Bakery"},
        {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Stop promotions"}]},
    ],
}
HOSTILE = {  # a signed item the bot cannot read, which would run in a page that did not escape it
    "object": "whatsapp_business_account",
    "entry": [{"id": WABA_ID, "changes": [{"field": "<script>alert(1)</script>", "value": {"note": "<b>bold</b>"}}]}],
}


@pytest.fixture
def checkpoints(tmp_path):
    return tmp_path / "checkpoints"


@pytest.fixture
def app(database_url, redis_url, graph, checkpoints):
    """The app reading Meta's catalog, keeping its signed checkpoints in a directory of the test's own."""
    graph.templates.append(ORDER_READY)
    app = create_app(app_config(database_url, redis_url, graph, WHATSAPP_BUSINESS_ACCOUNT_ID=WABA_ID, LEDGER_CHECKPOINTS=str(checkpoints)))
    yield app
    services_of(app).dispose()


def staff_browser(app, role: Role):
    """A client signed in as a staff member with `role`."""
    email = f"{role.value}@example.com"
    add_staff(app, email, role)
    client = app.test_client()
    assert sign_in(client, email).status_code == 302
    return client


def record_of(html: str, heading: str) -> str:
    """The one record (a list item) whose heading starts with `heading`."""
    found = [chunk for chunk in html.split('<li class="record')[1:] if re.search(rf"<h[23]>{re.escape(heading)}", chunk)]
    assert len(found) == 1, f"one record headed {heading!r}"
    return found[0].split("</li>")[0]


# -- templates -------------------------------------------------------------------------------


def test_the_templates_page_shows_each_template_s_text_and_marks_those_not_approved(app, graph):
    sync_templates(services_of(app))
    page = staff_browser(app, Role.VIEWER).get("/console/templates")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "5 templates as Meta lists them, read " in page_text(page) and "is not set" not in html

    ready = record_of(html, "order_ready")
    assert '<span class="part">Header</span>Order <span class="placeholder">{{1}}</span>' in ready
    assert 'Hello <span class="placeholder">{{1}}</span>, your order is ready.\nCollect it today.' in ready
    assert '<span class="part">Footer</span>Acme Bakery' in ready and '<span class="part">Buttons</span>Stop promotions' in ready
    assert '<span class="badge ok">approved</span>' in ready and "<dd>utility</dd>" in ready and "<dd>unknown</dd>" in ready

    paused = record_of(html, "winter_sale")
    assert paused.startswith(' refused"') and '<span class="badge bad">paused</span>' in paused
    assert "Winter sale: 30% off coats." in paused and "<dd>marketing</dd>" in paused and "<dd>green</dd>" in paused


def test_a_failed_sync_is_shown_with_the_catalog_it_keeps(app, graph):
    sync_templates(services_of(app))
    graph.templates_error = 190
    with pytest.raises(Exception, match="could not be read"):
        sync_templates(services_of(app))
    text = page_text(staff_browser(app, Role.VIEWER).get("/console/templates"))
    assert "The template sync at " in text and "could not be read" in text and "Sends are decided on the last good catalog." in text
    assert "5 templates as Meta lists them" in text


def test_without_an_account_id_the_page_says_the_caller_s_category_is_used(app):
    reconfigure(app, whatsapp_business_account_id=None)
    text = page_text(staff_browser(app, Role.VIEWER).get("/console/templates"))
    assert "WHATSAPP_BUSINESS_ACCOUNT_ID is not set: template sends are decided on the category their sender gives" in text
    assert "The catalog is empty." in text


# -- account health --------------------------------------------------------------------------


def at(body: dict, seconds_ago: int) -> dict:
    body["entry"][0]["time"] = int(time.time()) - seconds_ago
    return body


def quality_update(event: str, limit: str, seconds_ago: int) -> dict:
    body = at(payload("phone_number_quality_update.json"), seconds_ago)
    body["entry"][0]["changes"][0]["value"].update(event=event, current_limit=limit)
    return body


def test_the_health_page_shows_the_quality_and_limit_meta_reported_last(app):
    client = app.test_client()
    assert post(client, quality_update("FLAGGED", "TIER_2K", seconds_ago=600)).status_code == 200
    assert post(client, quality_update("UPGRADE", "TIER_10K", seconds_ago=7200)).status_code == 200  # older, delivered late
    assert post(client, at(payload("account_update_violation.json"), 60)).status_code == 200

    page = staff_browser(app, Role.VIEWER).get("/console/health")
    assert page.status_code == 200
    text = page_text(page)
    standing = text.split("Notices from Meta")[0]
    assert "Quality Flagged: quality is low, and the messaging limit will be lowered if it does not improve" in standing
    assert "Messaging limit 2,000 customers a day (TIER_2K)" in standing and "for 15550783881" in standing
    assert "Last update Account violation" in standing and "Violation info · violation type SCAM" in standing

    notices = text.split("Notices from Meta")[1].split("Unread webhooks")[0]
    assert notices.index("Account: Account violation") < notices.index("Phone number quality: Messaging limit raised")
    assert notices.index("Phone number quality: Messaging limit raised") < notices.index("Phone number quality: Flagged")
    assert "Current limit TIER_10K" in notices


def test_notices_are_paged_the_last_received_first(app, monkeypatch):
    monkeypatch.setattr("bot.console.health.PAGE", 2)
    client = app.test_client()
    for n, limit in enumerate(["TIER_50", "TIER_250", "TIER_1K"]):
        post(client, quality_update("UPGRADE", limit, seconds_ago=3600 - n))
    staff = staff_browser(app, Role.VIEWER)
    first = page_text(staff.get("/console/health"))
    assert "TIER_1K" in first and "TIER_250" in first and "Current limit TIER_50" not in first
    older = re.search(r'href="(/console/health\?before=\d+)"', staff.get("/console/health").get_data(as_text=True)).group(1)
    rest = page_text(staff.get(older)).split("Notices from Meta")[1]
    assert "Current limit TIER_50" in rest and "Current limit TIER_1K" not in rest and "Older notices" not in rest


def unread_rows(app) -> list[dict]:
    with services_of(app).engine.connect() as conn:
        return [dict(row) for row in conn.execute(sa.select(unread_webhooks)).mappings()]


def test_an_operator_inspects_an_unread_item_escaped_and_marks_it_handled(app):
    assert post(app.test_client(), HOSTILE).status_code == 200
    [item] = unread_rows(app)
    operator = staff_browser(app, Role.OPERATOR)

    listed = operator.get("/console/health").get_data(as_text=True)
    assert "<script>" not in listed and "field &#39;&lt;script&gt;alert(1)&lt;/script&gt;&#39; is not handled" in listed
    assert "1 not handled yet" in page_text(operator.get("/console/health"))
    inspected = operator.get(f"/console/health/unread/{item['id']}")
    html = inspected.get_data(as_text=True)
    assert inspected.status_code == 200 and "<script>" not in html and "<b>" not in html
    assert '  &#34;field&#34;: &#34;&lt;script&gt;alert(1)&lt;/script&gt;&#34;,' in html  # pretty-printed, every character escaped

    page = f"/console/health/unread/{item['id']}"
    marked = post_form(operator, page, f"{page}/handled")
    assert (marked.status_code, marked.headers["Location"]) == (302, f"/console/health?marked={item['id']}")
    [handled] = unread_rows(app)
    assert handled["handled_by"] == "staff:operator@example.com"
    assert abs(utc_now() - handled["handled_at"].replace(tzinfo=utc_now().tzinfo)) < timedelta(minutes=1)

    after = page_text(operator.get(f"/console/health?marked={item['id']}"))
    assert f"Item {item['id']} is marked handled." in after and "0 not handled yet" in after and "is not handled Inspect" not in after
    shown = page_text(operator.get("/console/health?handled=1"))
    assert "Inspect Handled by staff:operator@example.com at " in shown
    again = post_form(operator, page, f"{page}/handled")  # a second mark keeps the first
    assert again.status_code == 302 and unread_rows(app)[0]["handled_at"] == handled["handled_at"]


def test_a_viewer_sees_unread_items_but_cannot_mark_them_handled(app):
    post(app.test_client(), HOSTILE)
    [item] = unread_rows(app)
    viewer = staff_browser(app, Role.VIEWER)
    page = f"/console/health/unread/{item['id']}"
    assert "Mark handled" not in viewer.get("/console/health").get_data(as_text=True)
    assert "Mark handled" not in viewer.get(page).get_data(as_text=True)
    refused = post_form(viewer, page, f"{page}/handled")
    assert refused.status_code == 403 and "This page needs the operator role" in page_text(refused)
    operator = staff_browser(app, Role.OPERATOR)
    assert operator.post(f"{page}/handled").status_code == 403  # no CSRF token: a forged form
    assert operator.get("/console/health/unread/999999").status_code == 404
    assert unread_rows(app)[0]["handled_at"] is None


# -- audit -----------------------------------------------------------------------------------


@pytest.fixture
def recorded(app) -> None:
    """Five events of two people over three days."""
    ledger, now = services_of(app).ledger, utc_now()
    ledger.append(web_opt_in(USER, ref="f-1", occurred_at=now - timedelta(days=3)))
    ledger.append(web_opt_in(OTHER_USER, ref="f-2", occurred_at=now - timedelta(days=2)))
    ledger.append(opt_out(USER, ref="s-1"))
    ledger.append(web_opt_in(USER, ref="f-3"))
    ledger.append(opt_out(OTHER_USER, ref="s-2"))


def test_the_audit_download_is_the_staff_api_s_export(app, recorded):
    staff = staff_browser(app, Role.VIEWER)
    assert 'action="/console/audit/export"' in staff.get("/console/audit").get_data(as_text=True)
    since = (utc_now() - timedelta(days=2, hours=1)).replace(tzinfo=None).isoformat(timespec="minutes")  # as a browser sends it
    for query in ({"format": "csv"}, {"format": "jsonl", "since": since, "until": "", "wa_id": f"+{USER}"}):
        download = staff.get("/console/audit/export", query_string=query)
        assert download.status_code == 200 and download.is_streamed
        downloaded = download.get_data()  # read to the end, as a browser does, before the next request
        api_query = {key: value + "Z" if key == "since" else value for key, value in query.items() if value}
        exported = app.test_client().get("/api/v1/audit", headers=AUTH, query_string=api_query)
        assert download.headers["Content-Disposition"] == f'attachment; filename="consent-ledger.{query["format"]}"'
        assert downloaded == exported.get_data() and downloaded.count(b"\n") == (6 if query["format"] == "csv" else 2)
        assert download.headers["Content-Type"] == exported.headers["Content-Type"]
    lines = staff.get("/console/audit/export", query_string={"format": "jsonl", "since": since, "wa_id": USER}).get_data(as_text=True)
    assert [json.loads(line)["source_ref"] for line in lines.splitlines()] == ["s-1", "f-3"]

    refused = staff.get("/console/audit/export", query_string={"format": "csv", "wa_id": "abc"})
    assert refused.status_code == 422 and refused.mimetype == "text/html"
    assert "The export was not made: wa_id: " in page_text(refused) and 'value="abc"' in refused.get_data(as_text=True)


def test_the_chain_check_reports_ok_and_then_names_the_tampering(app, runner, recorded, checkpoints):
    assert runner.invoke(args=["consent", "checkpoint"]).exit_code == 0
    staff = staff_browser(app, Role.VIEWER)
    newest = page_text(staff.get("/console/audit")).split("Newest signed checkpoint")[1]
    head_hash = services_of(app).ledger.head()[1]
    assert f"Events (seq) 5 Head hash {head_hash[:16]}… Signed at " in newest and "Signature verifies with this LEDGER_SIGNING_KEY" in newest

    assert staff.post("/console/audit/check").status_code == 403  # no CSRF token
    good = post_form(staff, "/console/audit", "/console/audit/check")
    assert good.status_code == 200
    assert re.search(r"Ledger OK: 5 events, hash chain intact; 1 signed checkpoint agrees\. Took \d+ ms\.", page_text(good))

    with attacker(services_of(app).ledger) as conn:
        conn.execute(consent_events.update().where(consent_events.c.seq == 3).values(source_ref="s-1-edited"))
    bad = page_text(post_form(staff, "/console/audit", "/console/audit/check"))
    assert "Verification FAILED after 2 good events: event seq 3 (" in bad and "was altered: its content does not match its keyed hash" in bad

    path = next(checkpoints.glob("*.json"))
    path.write_text(json.dumps({**json.loads(path.read_text()), "seq": 4}))
    newest = page_text(staff.get("/console/audit")).split("Newest signed checkpoint")[1]
    assert "Events (seq) 4" in newest and "Signature does not verify has a bad signature: it was changed after it was signed" in newest
    failed = page_text(post_form(staff, "/console/audit", "/console/audit/check"))
    assert f"Verification FAILED after 0 good events: checkpoint {path.name} has a bad signature" in failed


def test_without_a_checkpoint_the_audit_page_says_how_one_is_made(app):
    text = page_text(staff_browser(app, Role.VIEWER).get("/console/audit"))
    assert "No checkpoint has been signed yet" in text and "flask consent checkpoint" in text


# -- navigation ------------------------------------------------------------------------------


def test_the_sections_are_links_in_the_navigation_and_on_the_home_page(app):
    staff = staff_browser(app, Role.VIEWER)
    html = staff.get("/console").get_data(as_text=True)
    for path, name in (("/console/templates", "Templates"), ("/console/health", "Account health"), ("/console/audit", "Audit")):
        assert html.count(f'<a href="{path}">{name}</a>') == 2  # the bar and the tile
        assert f'<a href="{path}" aria-current="page">{name}</a>' in staff.get(path).get_data(as_text=True)


# -- in a browser ----------------------------------------------------------------------------


def fits(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("device,viewport", [("desktop", {"width": 1280, "height": 800}), ("phone", {"width": 390, "height": 844})])
def test_an_operator_walks_templates_account_health_and_audit(app, runner, site, browser_page, device, viewport):
    """In headless Chromium, at desktop and phone width: nothing wider than the screen, nothing the CSP blocked."""
    services = services_of(app)
    sync_templates(services)
    client = app.test_client()
    post(client, quality_update("FLAGGED", "TIER_2K", seconds_ago=600))
    post(client, payload("account_update_violation.json"))
    post(client, HOSTILE)
    services.ledger.append(web_opt_in(USER, ref="f-1"))
    services.ledger.append(web_opt_in(OTHER_USER, ref="f-2"))
    services.ledger.append(opt_out(USER, ref="s-1"))
    assert runner.invoke(args=["consent", "checkpoint"]).exit_code == 0
    add_staff(app, "ann.lee@example.com", Role.OPERATOR)

    page = browser_page
    page.set_viewport_size(viewport)
    refused = sign_in_to_console(page, site, "ann.lee@example.com", PASSWORD)

    page.click("nav.sections >> text=Templates")
    assert page.url == f"{site}/console/templates"
    paused = page.locator("li.record.refused")
    assert paused.count() == 1 and "winter_sale" in paused.inner_text() and paused.locator(".badge.bad").inner_text().lower() == "paused"
    assert page.locator("li.record", has_text="order_ready").locator(".placeholder").all_inner_texts() == ["{{1}}", "{{1}}"]
    assert fits(page), "nothing wider than the screen"
    screenshot(page, f"console-templates-{device}")

    page.click("nav.sections >> text=Account health")
    assert page.url == f"{site}/console/health"
    assert "2,000 customers a day" in page.inner_text(".standing") and "Account violation" in page.inner_text(".standing")
    assert fits(page)
    screenshot(page, f"console-health-{device}")
    page.click("text=Inspect")
    assert "alert(1)" in page.inner_text("pre.raw") and page.locator("pre.raw b").count() == 0
    screenshot(page, f"console-unread-item-{device}")
    page.click("main button:has-text('Mark handled')")
    assert page.url.startswith(f"{site}/console/health?marked=") and "is marked handled." in page.inner_text("[role=status]")
    assert "0 not handled yet" in page.inner_text("main")
    page.click("text=Show handled ones too")
    assert "Handled by staff:ann.lee@example.com" in page.inner_text("li.record.handled")

    page.click("nav.sections >> text=Audit")
    assert page.url == f"{site}/console/audit"
    page.fill("#wa_id", f"+{USER}")
    page.select_option("#format", "jsonl")
    with page.expect_download() as download:
        page.click("text=Download")
    lines = download.value.path().read_text().splitlines()
    assert download.value.suggested_filename == "consent-ledger.jsonl" and len(lines) == 2
    page.click("text=Run chain check")
    assert "Ledger OK: 3 events, hash chain intact; 1 signed checkpoint agrees." in page.inner_text(".result.ok")
    assert page.inner_text(".badge.ok").lower() == "verifies"
    assert fits(page)
    screenshot(page, f"console-audit-{device}")
    assert refused == []
