"""The console's campaigns in real headless Chromium, at desktop and phone width: an operator
uploads a CSV, reads the dry run, sends, and watches the campaign page's funnel move to
delivered as Meta's delivered statuses come in by webhook, without reloading the page."""
from __future__ import annotations

import copy

import pytest
from playwright.sync_api import expect

from bot.domain.staff import Role
from bot.services import services_of
from tests.browser import screenshot, sign_in_to_console
from tests.helpers import opt_out, web_opt_in
from tests.test_identities import send_queued
from tests.test_staff_accounts import PASSWORD, add_staff
from tests.test_webhook import payload, post

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

CONSENTING = [f"1650555{n:04d}" for n in range(1, 7)]
STRANGER = "16505550099"


def delivered(meta_message_id: str, recipient: str) -> dict:
    body = copy.deepcopy(payload("status_delivered.json"))
    status = body["entry"][0]["changes"][0]["value"]["statuses"][0]
    status.update(id=meta_message_id, recipient_id=recipient)
    return body


@pytest.mark.parametrize("device,viewport", [("desktop", {"width": 1280, "height": 800}), ("phone", {"width": 390, "height": 844})])
def test_a_campaign_from_a_csv_upload_shows_its_funnel_moving_to_delivered(app, site, browser_page, tmp_path, device, viewport):
    for n, number in enumerate(CONSENTING):
        services_of(app).ledger.append(web_opt_in(number, ref=f"form-{n}"))
    add_staff(app, "ann.lee@example.com", Role.OPERATOR)
    listed = tmp_path / "customers.csv"
    listed.write_text("wa_id,name\n" + "".join(f"{number},customer\n" for number in [*CONSENTING, CONSENTING[0], STRANGER, "12"]) + ",\n")
    page = browser_page
    page.set_viewport_size(viewport)
    refused = sign_in_to_console(page, site, "ann.lee@example.com", PASSWORD)
    page.click("nav.sections >> text=Campaigns")
    assert page.inner_text("h1") == "Campaigns" and "No campaigns yet." in page.inner_text("main")

    page.click("text=New campaign")
    page.fill("#name", "spring_sale")
    page.set_input_files("#recipients", str(listed))
    page.click("main button[type=submit]")
    assert page.inner_text("h1") == "Dry run"
    counts = page.inner_text(".dry-run")
    assert "6" in page.inner_text(".dry-run .queued") and "BLANK ROWS\n1" in counts.upper()
    skipped = page.inner_text("table.skipped")
    assert "invalid_recipient\t1\t12" in skipped and f"no_consent\t1\t{STRANGER}" in skipped
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "nothing wider than the screen"
    screenshot(page, f"console-campaign-dry-run-{device}")

    page.click("text=Send to 6 recipients")
    assert page.inner_text(".status") == "RUNNING"
    assert page.inner_text(".stage-queued .count") == "6" and page.inner_text(".stage-delivered .count") == "0"

    sent = [message for message in send_queued(app) if message.meta_message_id]
    assert len(sent) == 6
    webhook = app.test_client()
    for message in sent[:4]:
        assert post(webhook, delivered(message.meta_message_id, message.recipient)).status_code == 200
    services_of(app).ledger.append(opt_out(CONSENTING[5], ref="stop-after-sale"))

    # the page's script reads progress.json every few seconds: no reload
    expect(page.locator(".stage-delivered .count")).to_have_text("4", timeout=15_000)
    assert page.inner_text(".stage-sent .count") == "2" and page.inner_text(".stage-queued .count") == "0"
    assert page.inner_text(".status") == "FINISHED"
    assert page.eval_on_selector(".stage-delivered meter", "meter => meter.value") == 4
    page.reload()  # the chart is drawn by the server
    assert "16.7%" in page.inner_text("[data-field=opt_out_percent]")
    assert page.locator("svg.chart polyline.rate").count() == 1
    assert "16.7% (1 of 6) at the latest" in page.inner_html("svg.chart title")  # the line ends where the numbers are
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "nothing wider than the screen"
    screenshot(page, f"console-campaign-page-{device}")

    page.click("text=Campaigns >> nth=0")
    assert "spring_sale (en_US)" in page.inner_text(".campaign-list")
    screenshot(page, f"console-campaigns-{device}")
    assert refused == []
