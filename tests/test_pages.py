"""The hosted /opt-in and /opt-out pages through Flask's client: what is recorded, what is refused."""
from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from bot.domain.consent import Action, Channel, Scope
from bot.services import services_of
from bot.staff import form_tokens
from tests.conftest import BUSINESS
from tests.helpers import USER

BROWSER = {"User-Agent": "Mozilla/5.0 (Linux; Android 14) Mobile"}
# Page behaviour does not depend on the database; the ledger itself is tested on both.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def token_from(client, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="token" value="([^"]+)"', page).group(1)


def submit(client, path: str, environ: dict | None = None, **form):
    token = form.pop("token", None) or token_from(client, path)
    return client.post(path, data={"token": token, **form}, headers=BROWSER, environ_base=environ or {"REMOTE_ADDR": "198.51.100.7"})


def test_the_opt_in_page_names_the_business_shows_the_text_and_an_unticked_optional_box(client):
    response = client.get("/opt-in")
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and BUSINESS in page
    assert f"Yes, {BUSINESS} may send me messages on WhatsApp" in page
    checkbox = re.search(r"<input[^>]*type=\"checkbox\"[^>]*>", page).group(0)
    assert "checked" not in checkbox and "required" not in checkbox
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "SameSite=Strict" in response.headers["Set-Cookie"] and "HttpOnly" in response.headers["Set-Cookie"]


def test_submitting_without_ticking_records_nothing_and_says_so(client, ledger):
    response = submit(client, "/opt-in", phone="+1 650 555 1234")
    assert response.status_code == 200 and "Nothing was recorded" in response.get_data(as_text=True)
    assert ledger.history(USER) == []


def test_ticking_and_submitting_records_the_opt_in_with_its_evidence(client, app, ledger):
    response = submit(client, "/opt-in", phone="+1 (650) 555-1234", consent="yes")
    assert response.status_code == 200 and "Thank you" in response.get_data(as_text=True)
    [event] = ledger.history(USER)
    assert (event.action, event.channel, event.scope, event.recorded_by) == (Action.OPT_IN, Channel.WEB, Scope.ALL, "page")
    assert event.consent_text.startswith(f"Yes, {BUSINESS} may send me messages on WhatsApp")
    assert event.evidence["consent_text_shown"] == event.consent_text
    assert event.evidence["ip"] == "198.51.100.7" and event.evidence["user_agent"] == BROWSER["User-Agent"]
    assert event.evidence["page"] == "/opt-in" and re.fullmatch(r"[0-9a-f]{12}", event.evidence["page_version"])
    assert event.source_ref.startswith("opt_in:")


def test_the_opt_out_page_records_an_opt_out_of_all_or_of_offers(client, ledger):
    assert submit(client, "/opt-out", phone=USER).status_code == 200
    assert submit(client, "/opt-out", phone="447700900123", scope="marketing").status_code == 200
    [all_scope] = ledger.history(USER)
    [marketing] = ledger.history("447700900123")
    assert (all_scope.action, all_scope.scope, all_scope.channel) == (Action.OPT_OUT, Scope.ALL, Channel.WEB)
    assert (marketing.action, marketing.scope) == (Action.OPT_OUT, Scope.MARKETING)
    assert "consent_text_shown" not in all_scope.evidence


@pytest.mark.parametrize("phone", ["", "0650555123", "12ab", "+" + "9" * 20, "<script>alert(1)</script>"])
def test_a_bad_number_is_refused_on_the_page_and_nothing_recorded(client, ledger, phone):
    response = submit(client, "/opt-in", phone=phone, consent="yes")
    page = response.get_data(as_text=True)
    assert response.status_code == 422 and "country code" in page
    assert "<script>alert" not in page  # echoed back escaped
    assert list(ledger.events()) == []


def test_forged_missing_or_expired_tokens_record_nothing(client, app, ledger):
    secret = app.config["SECRET_KEY"]
    real = token_from(client, "/opt-in")
    body, signature = real.rsplit(".", 1)
    forged = f"{body}.{'1' if signature[0] == '0' else '0'}{signature[1:]}"  # one character of the signature changed
    expired = form_tokens.issue(secret, now=0)
    for token, cookie in [("", real), (forged, forged), (expired, expired), (real, "other"), ("x.y.z", "x.y.z")]:
        client.set_cookie("form_token", cookie)
        response = client.post("/opt-in", data={"token": token, "phone": USER, "consent": "yes"})
        assert response.status_code == 400 and "expired" in response.get_data(as_text=True)
    client.delete_cookie("form_token")
    assert client.post("/opt-in", data={"token": real, "phone": USER, "consent": "yes"}).status_code == 400
    assert list(ledger.events()) == []


def test_a_double_submission_records_once(client, ledger):
    token = token_from(client, "/opt-in")
    for _ in range(2):
        client.set_cookie("form_token", token)
        assert client.post("/opt-in", data={"token": token, "phone": USER, "consent": "yes"}).status_code == 200
    assert len(ledger.history(USER)) == 1


def test_submissions_are_limited_per_ip_and_per_number(client, ledger):
    for n in range(5):
        assert submit(client, "/opt-in", phone=f"1650555000{n}", consent="yes").status_code == 200
    refused = submit(client, "/opt-in", phone="16505550009", consent="yes")
    assert refused.status_code == 429 and "Too many" in refused.get_data(as_text=True)
    assert ledger.history("16505550009") == []
    # The same number from many addresses is limited too: nobody flips someone's consent at scale.
    codes = [submit(client, "/opt-out", environ={"REMOTE_ADDR": f"203.0.113.{n}"}, phone=USER).status_code for n in range(7)]
    assert codes == [200] * 5 + [429] * 2 and len(ledger.history(USER)) == 5


def test_with_redis_down_an_opt_out_is_still_recorded_and_an_opt_in_waits(app_without_redis):
    """The rate limit lives in Redis. Without it an opt-out is recorded all the same (R7: never
    refused), while an opt-in, which the limit guards against abuse, is answered with a page
    asking to try again."""
    down = app_without_redis
    client = down.test_client()
    opt_out = submit(client, "/opt-out", phone=USER)
    assert opt_out.status_code == 200 and "text/html" in opt_out.content_type
    assert services_of(down).ledger.state(USER).state.value == "opted_out"
    opt_in = submit(client, "/opt-in", phone="447700900123", consent="yes")
    assert opt_in.status_code == 503 and "Please try again in a minute" in opt_in.get_data(as_text=True)
    assert services_of(down).ledger.history("447700900123") == []


def test_with_the_database_down_the_page_says_so_in_html(app, client, monkeypatch):
    ledger = services_of(app).ledger

    def unreachable(draft):
        raise sa.exc.OperationalError("INSERT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(ledger, "append", unreachable)
    response = submit(client, "/opt-out", phone=USER)
    assert response.status_code == 503 and "text/html" in response.content_type
    assert "Please try again in a minute" in response.get_data(as_text=True)
