"""Every console page as each role (SPEC §8): all of them open for every role, and a viewer can
change nothing: no form of theirs posts anywhere but sign-out and the chain check, and every
other POST route of the console refuses them (403), even with the session's CSRF token."""
from __future__ import annotations

import re

import pytest
from flask import url_for

from bot.console.rendering import SECTIONS
from bot.domain.staff import Role
from tests.test_console_auth import csrf_of, sign_in
from tests.test_staff_accounts import add_staff

# The console's POSTs any signed-in role may make: they change nothing of the business's.
FOR_EVERY_ROLE = {"/console/login", "/console/logout", "/console/password", "/console/audit/check"}


def section_pages(app) -> list[str]:
    with app.test_request_context():
        return [url_for("console.home.home")] + [url_for(section.endpoint) for section in SECTIONS]


def post_targets(html: str) -> set[str]:
    return {action for method, action in re.findall(r'<form[^>]*method="(post|POST)"[^>]*action="([^"]*)"', html)}


@pytest.mark.parametrize("role", list(Role))
def test_every_section_opens_for_every_role(app, client, role):
    add_staff(app, f"{role.value}@example.com", role)
    assert sign_in(client, f"{role.value}@example.com").status_code == 302
    for page in section_pages(app):
        answer = client.get(page)
        assert answer.status_code == 200, (page, answer.status_code)
        if role is Role.VIEWER:
            assert post_targets(answer.get_data(as_text=True)) <= FOR_EVERY_ROLE, page


def test_every_changing_post_refuses_a_viewer_with_a_valid_csrf_token(app, client):
    add_staff(app, "viewer@example.com", Role.VIEWER)
    sign_in(client, "viewer@example.com")
    token = csrf_of(client.get("/console"))
    changing = [
        re.sub(r"<[^>]+>", "1", rule.rule) for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/console") and "POST" in (rule.methods or ()) and rule.rule not in FOR_EVERY_ROLE
    ]
    assert len(changing) >= 6  # record consent, review, campaigns, unread items...
    for path in changing:
        assert client.post(path, data={"csrf_token": token}).status_code == 403, path
