"""Signing in to the staff console (SPEC §8) on both databases: the forced password change,
wrong passwords, slowed guessing, CSRF, sessions that end (disabled, signed out, expired,
tampered), roles, and the headers every console answer carries."""
from __future__ import annotations

import re
import time

import pytest
from flask import Blueprint

from bot.console.access import COOKIE, current_staff, guard, requires
from bot.console.rendering import render, serve_pages
from bot.console.session import ABSOLUTE, IDLE, ConsoleSession, SessionCookies
from bot.domain.staff import Role
from bot.services import services_of
from tests.test_staff_accounts import PASSWORD, add_staff

NEW_PASSWORD = "a different long passphrase"
STATIC_CSS = "/console/static/console.css"


def csrf_of(response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', response.get_data(as_text=True))
    assert found, "the page has a form with a CSRF token"
    return found.group(1)


def sign_in(client, email: str, password: str = PASSWORD, **form: str):
    token = csrf_of(client.get("/console/login"))
    return client.post("/console/login", data={"csrf_token": token, "email": email, "password": password, **form})


def post_form(client, page: str, path: str, **form: str):
    """Submit a form as the browser does: with the CSRF token of the page it was on."""
    return client.post(path, data={"csrf_token": csrf_of(client.get(page)), **form})


def page_text(response) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.get_data(as_text=True)))


def browser_at(app, address: str):
    """A client whose requests come from `address`."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def is_sign_in_redirect(response) -> bool:
    return response.status_code == 302 and response.headers["Location"].startswith("/console/login")


# -- signing in ------------------------------------------------------------------------------


def test_the_one_time_password_signs_in_only_to_choose_a_new_one(client, app, runner):
    one_time = runner.invoke(args=["staff", "add", "ann@example.com", "--role", "operator"]).output.split()[-1]
    assert is_sign_in_redirect(client.get("/console"))
    signed_in = sign_in(client, "Ann@Example.com", one_time)
    assert (signed_in.status_code, signed_in.headers["Location"]) == (302, "/console/password")
    assert client.get("/console").headers["Location"] == "/console/password"  # nothing else until it is changed
    form = client.get("/console/password")
    assert "Choose your password" in page_text(form) and "Sign out" in page_text(form)

    too_short = client.post("/console/password", data={"csrf_token": csrf_of(form), "current": one_time, "new": "short", "repeat": "short"})
    assert too_short.status_code == 422 and "The new password must have 12 to 1024 characters." in page_text(too_short)
    same = post_form(client, "/console/password", "/console/password", current=one_time, new=one_time, repeat=one_time)
    assert same.status_code == 422 and "must differ from the current one" in page_text(same)
    changed = post_form(client, "/console/password", "/console/password", current=one_time, new=NEW_PASSWORD, repeat=NEW_PASSWORD)
    assert (changed.status_code, changed.headers["Location"]) == (302, "/console")

    home = client.get("/console")
    assert home.status_code == 200
    assert "Signed in as ann@example.com with the operator role." in page_text(home)
    assert all(section in page_text(home) for section in ("People", "Review", "Campaigns", "Templates", "Account health", "Audit"))
    assert services_of(app).staff.sign_in("ann@example.com", one_time) is None


def test_a_new_password_ends_the_accounts_other_sessions(app, client):
    add_staff(app, "ann@example.com", Role.VIEWER)
    elsewhere = app.test_client()
    sign_in(elsewhere, "ann@example.com")
    sign_in(client, "ann@example.com")
    post_form(client, "/console/password", "/console/password", current=PASSWORD, new=NEW_PASSWORD, repeat=NEW_PASSWORD)
    assert client.get("/console").status_code == 200
    assert is_sign_in_redirect(elsewhere.get("/console"))


@pytest.mark.parametrize("email,password", [("ann@example.com", "not the password"), ("nobody@example.com", PASSWORD), ("", "")])
def test_a_wrong_password_and_an_unknown_address_are_refused_alike(app, client, email, password):
    add_staff(app, "ann@example.com", Role.ADMIN)
    response = sign_in(client, email, password)
    assert response.status_code == 401 and "Wrong email address or password." in page_text(response)
    assert is_sign_in_redirect(client.get("/console"))


def test_a_disabled_account_cannot_sign_in(app, client, runner):
    add_staff(app, "ann@example.com", Role.ADMIN)
    runner.invoke(args=["staff", "disable", "ann@example.com"])
    assert sign_in(client, "ann@example.com").status_code == 401


@pytest.mark.parametrize("next_page,lands_on", [("/console/password", "/console/password"), ("https://evil.example/console", "/console"), ("//evil.example", "/console")])
def test_signing_in_returns_to_a_console_page_only(app, client, next_page, lands_on):
    add_staff(app, "ann@example.com", Role.VIEWER)
    assert sign_in(client, "ann@example.com", next=next_page).headers["Location"] == lands_on


# -- guessing is slowed ----------------------------------------------------------------------


@pytest.mark.parametrize("email", ["ann@example.com", "nobody@example.com"])
def test_after_five_attempts_an_address_is_refused_even_the_right_password(app, client, email):
    add_staff(app, "ann@example.com", Role.ADMIN)
    for _ in range(5):
        assert sign_in(client, email, "guess number n").status_code == 401
    refused = sign_in(client, email)
    assert refused.status_code == 429 and "Too many attempts. Please wait 3 minutes and try again." in page_text(refused)
    assert is_sign_in_redirect(client.get("/console"))
    assert sign_in(browser_at(app, "203.0.113.9"), email).status_code == 429  # the address's budget, wherever the guesses come from


def test_after_twenty_attempts_a_network_is_refused_for_every_address(app, client):
    add_staff(app, "ann@example.com", Role.ADMIN)
    for n in range(20):
        assert sign_in(client, f"guess{n}@example.com", "guess").status_code == 401
    assert sign_in(client, "ann@example.com").status_code == 429
    assert sign_in(browser_at(app, "203.0.113.9"), "ann@example.com").status_code == 302


def test_password_changes_count_against_the_accounts_budget(app, client):
    add_staff(app, "ann@example.com", Role.ADMIN)
    sign_in(client, "ann@example.com")
    for _ in range(4):
        wrong = post_form(client, "/console/password", "/console/password", current="a wrong guess", new=NEW_PASSWORD, repeat=NEW_PASSWORD)
        assert wrong.status_code == 422 and "The current password is wrong." in page_text(wrong)
    refused = post_form(client, "/console/password", "/console/password", current=PASSWORD, new=NEW_PASSWORD, repeat=NEW_PASSWORD)
    assert refused.status_code == 429 and services_of(app).staff.sign_in("ann@example.com", PASSWORD) is not None


def test_without_redis_sign_in_is_refused_with_a_page(app_without_redis):
    add_staff(app_without_redis, "ann@example.com", Role.ADMIN)
    response = sign_in(app_without_redis.test_client(), "ann@example.com")
    assert response.status_code == 503 and response.mimetype == "text/html"
    assert "Please try again in a minute." in page_text(response)


# -- CSRF ------------------------------------------------------------------------------------


def test_a_post_without_the_sessions_csrf_token_is_refused(app, client):
    add_staff(app, "ann@example.com", Role.ADMIN)
    client.get("/console/login")
    unsigned = client.post("/console/login", data={"email": "ann@example.com", "password": PASSWORD})
    assert unsigned.status_code == 403 and "did not come from this console" in page_text(unsigned)
    assert is_sign_in_redirect(client.get("/console"))

    stranger = app.test_client()  # a token from another browser's session is no better
    foreign = client.post("/console/login", data={"csrf_token": csrf_of(stranger.get("/console/login")), "email": "ann@example.com", "password": PASSWORD})
    assert foreign.status_code == 403

    sign_in(client, "ann@example.com")
    for form in ({}, {"csrf_token": ""}, {"csrf_token": csrf_of(stranger.get("/console/login"))}):
        assert client.post("/console/logout", data=form).status_code == 403
    assert client.get("/console").status_code == 200  # still signed in


def test_the_csrf_token_changes_at_sign_in(app, client):
    add_staff(app, "ann@example.com", Role.ADMIN)
    before = csrf_of(client.get("/console/login"))
    client.post("/console/login", data={"csrf_token": before, "email": "ann@example.com", "password": PASSWORD})
    assert client.post("/console/logout", data={"csrf_token": before}).status_code == 403
    assert csrf_of(client.get("/console")) != before


# -- sessions end ----------------------------------------------------------------------------


def test_a_disabled_accounts_session_ends_at_its_next_request(app, client, runner):
    add_staff(app, "ann@example.com", Role.ADMIN)
    sign_in(client, "ann@example.com")
    assert client.get("/console").status_code == 200
    runner.invoke(args=["staff", "disable", "ann@example.com"])
    assert is_sign_in_redirect(client.get("/console"))


def test_signing_out_ends_the_session_and_any_copy_of_its_cookie(app, client):
    add_staff(app, "ann@example.com", Role.ADMIN)
    sign_in(client, "ann@example.com")
    copied = client.get_cookie(COOKIE, path="/console").value
    signed_out = post_form(client, "/console", "/console/logout")
    assert (signed_out.status_code, signed_out.headers["Location"]) == (302, "/console/login?signed_out=1")
    assert "You are signed out." in page_text(client.get("/console/login?signed_out=1"))
    assert is_sign_in_redirect(client.get("/console"))
    replayed = app.test_client()
    replayed.set_cookie(COOKIE, copied, path="/console")
    assert is_sign_in_redirect(replayed.get("/console"))


def session_cookie(app, idle: float = 0, age: float = 60, secret: str | None = None) -> str:
    """A signed-in session cookie for ann@example.com, made as the console makes them: signed in
    `age` seconds ago and last used `idle` seconds ago."""
    account = services_of(app).staff.get("ann@example.com")
    session = ConsoleSession.anonymous().signed_in(account.email, account.session_generation, time.time() - age)
    return SessionCookies(secret or app.config["SECRET_KEY"]).dump(session, time.time() - idle)


def tampered(cookie: str) -> str:
    return cookie[:-1] + ("A" if cookie[-1] != "A" else "B")


@pytest.mark.parametrize(
    "make_cookie",
    [
        lambda app: session_cookie(app, idle=IDLE + 60, age=IDLE + 60),
        lambda app: session_cookie(app, age=ABSOLUTE + 60),
        lambda app: tampered(session_cookie(app)),
        lambda app: session_cookie(app, secret="another-secret-key"),
    ],
    ids=["idle-too-long", "signed-in-too-long-ago", "tampered", "signed-with-another-key"],
)
def test_an_expired_or_forged_cookie_is_refused(app, client, make_cookie):
    add_staff(app, "ann@example.com", Role.ADMIN)
    client.set_cookie(COOKIE, session_cookie(app, idle=IDLE - 60, age=ABSOLUTE - 60), path="/console")
    assert client.get("/console").status_code == 200  # within both limits, a cookie made the same way works
    client.set_cookie(COOKIE, make_cookie(app), path="/console")
    assert is_sign_in_redirect(client.get("/console"))


# -- roles -----------------------------------------------------------------------------------


@pytest.fixture
def probe(app):
    """A page that needs the operator role, as later console pages will, showing what it records."""
    bp = Blueprint("probe", __name__, url_prefix="/console/probe")
    guard(bp)
    serve_pages(bp)

    @bp.get("")
    @requires(Role.OPERATOR)
    def operators_only():
        return render("error", title="Probe", detail=current_staff().recorded_by)

    app.register_blueprint(bp)
    return "/console/probe"


@pytest.mark.parametrize("role,status", [(Role.VIEWER, 403), (Role.OPERATOR, 200), (Role.ADMIN, 200)])
def test_a_page_for_operators_refuses_a_viewer_with_a_page(app, client, probe, role, status):
    add_staff(app, "ann@example.com", role)
    assert is_sign_in_redirect(client.get(probe))
    sign_in(client, "ann@example.com")
    response = client.get(probe)
    assert response.status_code == status and response.mimetype == "text/html"
    expected = "This page needs the operator role; you are signed in as viewer." if status == 403 else "staff:ann@example.com"
    assert expected in page_text(response)


# -- what every answer carries --------------------------------------------------------------


def test_every_console_answer_is_uncached_unframed_and_under_a_strict_csp(app, client):
    add_staff(app, "ann@example.com", Role.ADMIN)
    answers = [client.get("/console/login"), sign_in(client, "ann@example.com", "wrong"), client.get(STATIC_CSS)]
    sign_in(client, "ann@example.com")
    answers += [client.get("/console"), client.get("/console/password"), client.get("/console/nowhere"), client.get("/console/logout")]
    assert [answer.status_code for answer in answers] == [200, 401, 200, 200, 200, 404, 405]
    for answer in answers:
        assert answer.headers["Cache-Control"] == "no-store"
        csp = answer.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "form-action 'self'" in csp and "unsafe" not in csp
        assert (answer.headers["X-Frame-Options"], answer.headers["Referrer-Policy"], answer.headers["X-Content-Type-Options"]) == (
            "DENY", "same-origin", "nosniff",
        )
    assert [answer.mimetype for answer in answers] == ["text/html"] * 2 + ["text/css"] + ["text/html"] * 4
    for page in answers[:2] + answers[3:]:
        html = page.get_data(as_text=True)
        assert "<script" not in html and "<style" not in html and " style=" not in html and 'rel="stylesheet"' in html


@pytest.mark.parametrize("base_url,secure", [("http://localhost", False), ("https://localhost", True)])
def test_the_session_cookie_is_httponly_samesite_and_expires(app, base_url, secure):
    client = app.test_client()
    response = client.get("/console/login", base_url=base_url)
    [cookie] = [value for value in response.headers.getlist("Set-Cookie") if value.startswith(f"{COOKIE}=")]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "max-age", "path"} <= attributes and ("secure" in attributes) is secure
    assert "SameSite=Lax" in cookie and f"Max-Age={IDLE}" in cookie and "Path=/console" in cookie
