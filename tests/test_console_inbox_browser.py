"""The console's Inbox in real headless Chromium, at desktop and phone width: an operator opens
the inbox, replies inside one person's 24-hour window and sees the reply queued in the thread,
then sends a template from Meta's catalog to a person whose window has closed, and takes that
conversation over."""
from __future__ import annotations

from datetime import timedelta

import pytest
from playwright.sync_api import Page

from bot.domain.staff import Role
from tests import test_console_campaigns
from tests.browser import screenshot, sign_in_to_console
from tests.helpers import OTHER_USER, USER
from tests.test_console_inbox import text, written
from tests.test_console_people_browser import DEVICES, fits
from tests.test_staff_accounts import PASSWORD, add_staff

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

OPERATOR = "ana@example.com"
catalog_app = test_console_campaigns.catalog_app  # a fixture: the app with Meta's template catalog


@pytest.fixture
def app(catalog_app):
    """The app with Meta's template catalog, which the reply form outside the window offers."""
    return catalog_app


@pytest.mark.parametrize("device,viewport", DEVICES)
def test_an_operator_replies_in_the_window_and_with_a_template_outside_it(app, site, browser_page, device, viewport):
    page: Page = browser_page
    written(app, OTHER_USER, timedelta(hours=26), **text("Is my order #1042 ready? I can come by on Saturday morning."))
    written(app, USER, timedelta(minutes=5), **text("Hi! Do you have gluten-free bread today?"))
    written(app, USER, timedelta(minutes=4), type="image", image={"caption": "like this one", "mime_type": "image/jpeg", "id": "1003383421387256"})
    add_staff(app, OPERATOR, Role.OPERATOR)
    page.set_viewport_size(viewport)
    refused = sign_in_to_console(page, site, OPERATOR, PASSWORD)
    assert page.url == f"{site}/console"

    page.click("nav.sections >> text=Inbox")
    names = page.locator(".conversation-name").all_inner_texts()
    assert names == [USER, OTHER_USER]
    assert page.inner_text(".conversation.has-unread .badge.unread") == "2 unread"
    assert fits(page), "nothing wider than the screen"
    screenshot(page, f"console-inbox-{device}")

    page.click(f".conversation-name >> text={USER}")
    assert "Hi! Do you have gluten-free bread today?" in page.inner_text("#thread")
    assert "📷 Photo (image/jpeg) · Meta media id 1003383421387256" in page.inner_text("#thread")
    assert "The 24-hour window is open for" in page.inner_text("#reply")
    page.fill("#text", "Yes! Gluten-free loaves are on the left shelf until 6 pm.")
    page.click("#reply button[type=submit]")
    assert "Sent to the queue" in page.inner_text("[role=status]")
    last = page.locator("#thread .bubble").last
    assert "Yes! Gluten-free loaves are on the left shelf until 6 pm." in last.inner_text() and "Queued" in last.inner_text()
    assert f"by {OPERATOR}" in last.inner_text()
    assert fits(page)
    screenshot(page, f"console-conversation-replied-{device}")

    page.click("p.crumbs >> text=Inbox")
    page.click(f".conversation-name >> text={OTHER_USER}")
    assert "The 24-hour window is closed" in page.inner_text("#reply") and page.locator("#text").count() == 0
    page.select_option("#template", "order_update/en_US")
    page.click("#reply >> text=Next")
    assert "Your order {{1}} is {{2}}." in page.inner_text("#reply")
    page.fill("[name='body.1']", "#1042")
    page.fill("[name='body.2']", "ready for pick-up")
    screenshot(page, f"console-conversation-template-form-{device}")
    page.click("#reply >> text=Send template")
    assert "Template order_update (en_US)" in page.locator("#thread .bubble").last.inner_text()

    page.click("#handling >> text=Take over")
    assert f"Handled by {OPERATOR} since" in page.inner_text("#handling")
    assert fits(page)
    screenshot(page, f"console-conversation-template-{device}")
    assert refused == []
