"""Headless Chromium for page tests: Debian's /usr/bin/chromium driven by Playwright (Playwright's
own browser download cannot run here). Loaded for every test module by conftest.py."""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, sync_playwright
from werkzeug.serving import make_server

from bot.settings import PROJECT_ROOT

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = PROJECT_ROOT / "test-artifacts"  # screenshots to look at; ignored by git


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (bash .ci/run does), or set CHROMIUM")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium: Browser) -> Iterator[Page]:
    """A fresh page (its own cookies and storage) in a desktop-sized window."""
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


@pytest.fixture
def site(app: Flask) -> Iterator[str]:
    """The app on a local port, as a browser reaches it."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def screenshot(page: Page, name: str) -> Path:
    """Save what the page shows as test-artifacts/NAME.png, to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in_to_console(page: Page, site: str, email: str, password: str) -> list[str]:
    """Sign in at the console's sign-in page; the list returned fills with whatever the
    Content-Security-Policy blocks from then on, as the browser reports it."""
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None)
    page.goto(f"{site}/console/login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("main button[type=submit]")
    return refused
