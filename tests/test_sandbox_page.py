"""The sandbox's chat page in a real headless Chromium, against the bot started by `python3 dev.py start`."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser import screenshot
from tests.local_run import running_bot

pytestmark = [pytest.mark.processes, pytest.mark.browser]


def test_a_person_chats_with_the_bot_on_the_sandbox_page(tmp_path, redis_url, browser_page):
    page = browser_page
    with running_bot(tmp_path, redis_url) as bot:
        page.goto(bot.sandbox_url)
        expect(page.get_by_role("heading", name="WhatsApp sandbox")).to_be_visible()
        page.get_by_label("Your WhatsApp number").fill("+44 7700 900123")
        page.get_by_role("button", name="Open chat").click()
        expect(page.locator("#who")).to_have_text("+447700900123")

        page.get_by_label("Message").fill("Hello! Do you deliver on Sundays?")
        page.get_by_role("button", name="Send").click()
        bot_messages = page.locator(".msg.out .body")
        expect(bot_messages.first).to_contain_text("Welcome to Acme Bakery!")
        expect(page.locator("#state")).to_have_text("implicit")
        expect(page.locator(".msg.out .meta").first).to_contain_text("read")  # the page was looked at

        page.get_by_role("button", name="Stop promotions").click()  # a quick-reply tap
        expect(page.locator("#marketing")).to_have_text("opted_out")
        expect(page.locator(".msg.in .label").last).to_have_text("Quick reply")
        expect(bot_messages.nth(1)).to_contain_text("You will get no more offers from Acme Bakery")

        page.get_by_role("button", name="STOP", exact=True).click()
        expect(bot_messages.nth(2)).to_contain_text("You are unsubscribed from Acme Bakery")
        expect(page.locator("#state")).to_have_text("opted_out")
        expect(page.locator("#history li")).to_have_count(4)  # implicit, notice given, marketing opt-out, opt-out
        expect(page.locator("#history li").first).to_contain_text(re.compile(r"opt_out · all · whatsapp_keyword"))
        expect(page.locator("#chat-list li")).to_have_text(["+447700900123"])
        screenshot(page, "sandbox-chat")

        # A username user: Meta names them by BSUID only, and the bot answers them all the same.
        page.get_by_role("button", name="Username user").click()
        expect(page.locator("#who")).to_contain_text("(username, no phone)")
        page.get_by_label("Message").fill("hi")
        page.get_by_role("button", name="Send").click()
        expect(bot_messages.first).to_contain_text("Welcome to Acme Bakery!")
        expect(page.locator("#identifiers")).to_have_text(re.compile(r"^US\.[0-9]{16}$"))
        page.get_by_role("button", name="STOP", exact=True).click()
        expect(bot_messages.nth(1)).to_contain_text("You are unsubscribed from Acme Bakery")
        expect(page.locator("#state")).to_have_text("opted_out")
        expect(page.locator("#chat-list li")).to_have_count(2)
        screenshot(page, "sandbox-username-user")
