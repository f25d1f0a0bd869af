"""The console's People and Review pages in real headless Chromium, at desktop and phone width:
an operator confirms a possible opt-out from the review queue and sees the person opted out;
a viewer sees the same pages without a button that changes anything."""
from __future__ import annotations

import pytest
from playwright.sync_api import Page

from bot.domain.staff import Role
from bot.services import services_of
from tests.browser import screenshot, sign_in_to_console
from tests.helpers import OTHER_USER, web_opt_in
from tests.test_console_people import possible_opt_out
from tests.test_staff_accounts import PASSWORD, add_staff

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

DEVICES = [("desktop", {"width": 1280, "height": 800}), ("phone", {"width": 390, "height": 844})]


def signed_in_with_one_to_review(app, page: Page, site: str, role: Role, viewport: dict) -> list[str]:
    """A person who opted in on the website then wrote a possible opt-out, and a staff member
    with `role` (staff@example.com) signed in on `page`; the list that collects what the
    Content-Security-Policy blocked."""
    email = "staff@example.com"
    add_staff(app, email, role)
    services_of(app).ledger.append(web_opt_in(OTHER_USER))
    possible_opt_out(app, app.test_client())
    page.set_viewport_size(viewport)
    refused = sign_in_to_console(page, site, email, PASSWORD)
    assert page.url == f"{site}/console"
    return refused


def fits(page: Page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.parametrize("device,viewport", DEVICES)
def test_an_operator_confirms_a_possible_opt_out_and_sees_the_person_opted_out(app, site, browser_page, device, viewport):
    page = browser_page
    refused = signed_in_with_one_to_review(app, page, site, Role.OPERATOR, viewport)

    page.click("nav.sections >> text=People")
    screenshot(page, f"console-people-search-{device}")
    page.fill("#q", f"+{OTHER_USER}")
    page.click("form.search button")
    assert page.url == f"{site}/console/people/{OTHER_USER}"
    assert page.inner_text(".person-facts .badge.state-opted_in") == "Opted in"
    assert fits(page), "nothing wider than the screen"
    screenshot(page, f"console-person-{device}")

    page.click("nav.sections >> text=Review")
    assert "why do you keep messaging me?" in page.inner_text("#queue")
    screenshot(page, f"console-review-{device}")
    page.click("#queue >> text=Confirm opt-out")
    assert f"Confirmed as an opt-out: {OTHER_USER}" in page.inner_text("[role=status]")
    assert "Nothing waits for review." in page.inner_text("#queue")
    assert "Confirmed as an opt-out by staff@example.com" in page.inner_text("#decided")
    assert fits(page)
    screenshot(page, f"console-review-decided-{device}")

    page.click(f"text=Open {OTHER_USER}'s page")
    assert page.inner_text(".person-facts .badge.state-opted_out") == "Opted out"
    assert "Opted out of all messages — recorded by staff" in page.inner_text("#history")
    assert refused == []


@pytest.mark.parametrize("device,viewport", DEVICES)
def test_a_viewer_sees_the_pages_without_buttons_that_change_anything(app, site, browser_page, device, viewport):
    page = browser_page
    refused = signed_in_with_one_to_review(app, page, site, Role.VIEWER, viewport)

    page.goto(f"{site}/console/review")
    assert "why do you keep messaging me?" in page.inner_text("#queue")
    assert page.locator("main button").count() == 0
    screenshot(page, f"console-review-viewer-{device}")
    page.goto(f"{site}/console/people/{OTHER_USER}")
    assert page.locator("main form").count() == 0 and page.locator("main button").count() == 0
    assert "Opted in — on the website" in page.inner_text("#history")
    assert fits(page)
    screenshot(page, f"console-person-viewer-{device}")
    assert refused == []
