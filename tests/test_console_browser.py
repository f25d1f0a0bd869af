"""The console's sign-in in real headless Chromium, at desktop and phone width: a new staff
member signs in with the one-time password, must choose their own, and lands on the home page."""
from __future__ import annotations

import pytest

from tests.browser import screenshot

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

NEW_PASSWORD = "a long passphrase of my own"


@pytest.mark.parametrize("device,viewport", [("desktop", {"width": 1280, "height": 800}), ("phone", {"width": 390, "height": 844})])
def test_first_sign_in_forces_a_new_password_then_shows_the_home_page(site, runner, browser_page, device, viewport):
    one_time = runner.invoke(args=["staff", "add", "ann.lee@example.com", "--role", "operator"]).output.split()[-1]
    page = browser_page
    page.set_viewport_size(viewport)
    refused = []  # anything the Content-Security-Policy blocked, as the browser reports it
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None)

    page.goto(f"{site}/console")
    assert page.url == f"{site}/console/login?next=/console"
    screenshot(page, f"console-sign-in-{device}")
    page.fill("#email", "ann.lee@example.com")
    page.fill("#password", "not my password")
    page.click("main button[type=submit]")
    assert "Wrong email address or password." in page.inner_text("[role=alert]")
    page.fill("#password", one_time)
    page.click("main button[type=submit]")

    assert page.url == f"{site}/console/password"
    assert page.inner_text("h1") == "Choose your password"
    page.fill("#current", one_time)
    page.fill("#new", NEW_PASSWORD)
    page.fill("#repeat", NEW_PASSWORD)
    screenshot(page, f"console-choose-password-{device}")
    page.click("main button[type=submit]")

    assert page.url == f"{site}/console"
    assert "Signed in as ann.lee@example.com with the operator role." in page.inner_text("main")
    assert page.inner_text(".who .role") == "Operator"  # styled by the console's style sheet (capitalised)
    nav = page.inner_text("nav.sections")
    assert all(section in nav for section in ("Home", "People", "Review", "Campaigns", "Templates", "Account health", "Audit"))
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "nothing wider than the screen"
    screenshot(page, f"console-home-{device}")
    assert refused == []

    page.click("text=Sign out")
    assert page.url == f"{site}/console/login?signed_out=1" and "You are signed out." in page.inner_text("[role=status]")
