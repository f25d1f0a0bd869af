"""The hosted pages in real headless Chromium, served over real HTTP: what a person sees and does."""
from __future__ import annotations

from urllib.parse import unquote

import pytest

from bot.domain.consent import Action, Scope
from tests.browser import screenshot
from tests.conftest import BUSINESS
from tests.helpers import USER, reconfigure
from tests.test_pages import send_from_whatsapp

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_the_consent_box_is_unchecked_on_load_and_an_unticked_submit_records_nothing(site, browser_page, ledger):
    page = browser_page
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.goto(f"{site}/opt-in")
    assert BUSINESS in page.inner_text("body")
    assert page.inner_text("#consent-text").startswith(f"Yes, {BUSINESS} may send me messages on WhatsApp")
    assert not page.is_checked("#consent")
    screenshot(page, "opt-in-page")
    page.fill("#phone", "+1 650 555 1234")
    page.click("button[type=submit]")
    assert "Nothing was recorded" in page.inner_text("[role=status]")
    assert ledger.history(USER) == []


def opt_in(page, site: str, phone: str) -> None:
    """Type the number, tick the box, submit: what a person does on the opt-in page."""
    page.goto(f"{site}/opt-in")
    page.fill("#phone", phone)
    page.check("#consent")
    page.click("button[type=submit]")


def test_ticking_and_submitting_shows_how_to_confirm_from_whatsapp_then_the_confirmation_opts_in(site, app, browser_page, ledger):
    reconfigure(app, whatsapp_business_number="15550100000")
    page = browser_page
    page.set_viewport_size({"width": 390, "height": 844})
    opt_in(page, site, "+1 650 555 1234")
    assert "One more step" in page.inner_text("[role=status]")
    link = page.get_attribute("a.whatsapp", "href")
    confirmation = page.inner_text("#confirmation")
    assert link.startswith("https://wa.me/15550100000?text=") and unquote(link.split("text=")[1]) == confirmation
    assert page.is_visible(".qr svg")
    screenshot(page, "opt-in-confirm-from-whatsapp")
    assert ledger.history(USER) == []
    send_from_whatsapp(app.test_client(), USER, confirmation)
    [event] = [event for event in ledger.history(USER) if event.action is Action.OPT_IN]
    assert event.evidence["consent_text_shown"] == event.consent_text
    assert event.evidence["ip"] == "127.0.0.1" and "HeadlessChrome" in event.evidence["user_agent"]


def test_a_bad_number_is_explained_on_the_page(site, browser_page, ledger):
    page = browser_page
    opt_in(page, site, "0650 555")
    assert "country code" in page.inner_text("[role=alert]")
    screenshot(page, "opt-in-bad-number")
    assert list(ledger.events()) == []


def test_the_opt_out_page_records_an_opt_out(site, browser_page, ledger):
    page = browser_page
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{site}/opt-out")
    screenshot(page, "opt-out-page")
    page.fill("#phone", "+1 650 555 1234")
    page.click("button[type=submit]")
    assert "will not send you" in page.inner_text("[role=status]")
    screenshot(page, "opt-out-done")
    [event] = ledger.history(USER)
    assert (event.action, event.scope) == (Action.OPT_OUT, Scope.ALL)
