"""The hosted /opt-in and /opt-out pages through Flask's client: what is recorded, what is refused."""
from __future__ import annotations

import re
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from bot.domain.consent import Action, Channel, Marketing, Scope, State
from bot.domain.policy import MessageKind
from bot.services import services_of
from bot.staff import form_tokens
from bot.storage.outbox import Template
from bot.storage.web_opt_ins import KEY, LIFETIME
from tests.conftest import BUSINESS
from tests.helpers import OTHER_USER, USER, reconfigure
from tests.test_webhook import message_body, post

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


def requested_code(response) -> str:
    """The confirmation message the page asks the visitor to send from WhatsApp."""
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and "One more step" in page
    return re.search(r'<p class="confirmation" id="confirmation">([^<]+)</p>', page).group(1)


def send_from_whatsapp(client, sender: str, text: str, message_id: str = "wamid.CONFIRM") -> None:
    body = message_body(id=message_id, type="text", text={"body": text})
    value = body["entry"][0]["changes"][0]["value"]
    value["messages"][0]["from"] = value["contacts"][0]["wa_id"] = sender
    assert post(client, body).status_code == 200


def test_ticking_and_submitting_asks_for_a_confirmation_from_whatsapp_and_records_nothing_yet(client, ledger):
    confirmation = requested_code(submit(client, "/opt-in", phone="+1 (650) 555-1234", consent="yes"))
    assert re.fullmatch(rf"Yes, I want messages from {BUSINESS} on WhatsApp\. OPTIN-[A-Z2-9]{{8}}", confirmation)
    assert ledger.history(USER) == []


def test_the_confirmation_from_the_same_number_records_the_opt_in_with_both_evidences(client, app, ledger):
    confirmation = requested_code(submit(client, "/opt-in", phone="+1 (650) 555-1234", consent="yes"))
    for _ in range(2):  # Meta delivers it twice: one opt-in
        send_from_whatsapp(client, USER, confirmation.lower())
    [opt_in] = [event for event in ledger.history(USER) if event.action is Action.OPT_IN]
    assert (opt_in.channel, opt_in.scope, opt_in.recorded_by) == (Channel.WEB, Scope.ALL, "webhook")
    assert opt_in.consent_text.startswith(f"Yes, {BUSINESS} may send me messages on WhatsApp")
    assert opt_in.evidence["consent_text_shown"] == opt_in.consent_text
    assert opt_in.evidence["ip"] == "198.51.100.7" and opt_in.evidence["user_agent"] == BROWSER["User-Agent"]
    assert opt_in.evidence["page"] == "/opt-in" and re.fullmatch(r"[0-9a-f]{12}", opt_in.evidence["page_version"])
    assert opt_in.evidence["confirmed_by"] == {"whatsapp_message_id": "wamid.CONFIRM", "code": confirmation[-8:]}
    state = ledger.state(USER)
    assert (state.state, state.marketing) == (State.OPTED_IN, Marketing.ALLOWED)


def test_a_stranger_cannot_opt_in_someone_who_said_stop(client, app, ledger):
    """Before: anyone could submit anyone's number, override their STOP and let a campaign reach them."""
    send_from_whatsapp(client, USER, "STOP", "wamid.STOP")
    confirmation = requested_code(submit(client, "/opt-in", environ={"REMOTE_ADDR": "203.0.113.66"}, phone=USER, consent="yes"))
    send_from_whatsapp(client, OTHER_USER, confirmation)  # the stranger sends the code from their own WhatsApp
    assert ledger.state(USER).state is State.OPTED_OUT and ledger.state(OTHER_USER).state is State.IMPLICIT
    campaign = services_of(app).campaigns.send(Template("spring_sale", "en"), MessageKind.MARKETING_TEMPLATE, [USER], "staff:test")
    assert (campaign.queued, campaign.skipped) == (0, {"opted_out": 1})


def test_an_expired_request_confirms_nothing(client, app, ledger):
    confirmation = requested_code(submit(client, "/opt-in", phone=USER, consent="yes"))
    connection = services_of(app).redis
    [key] = connection.keys(f"{KEY}*")
    assert 0 < connection.ttl(key) <= LIFETIME
    connection.delete(key)  # as Redis does when the hour is over
    send_from_whatsapp(client, USER, confirmation)
    assert ledger.state(USER).state is State.IMPLICIT  # the message opened a session, nothing more


def test_with_the_business_number_the_page_links_to_whatsapp_with_the_message_and_a_qr_code(client, app):
    reconfigure(app, whatsapp_business_number="15550100000")
    response = submit(client, "/opt-in", phone=USER, consent="yes")
    confirmation = requested_code(response)
    page = response.get_data(as_text=True)
    link = re.search(r'<a class="whatsapp" href="([^"]+)"', page).group(1)
    assert link == "https://wa.me/15550100000?text=" + quote(confirmation).replace("&", "&amp;")
    assert "<svg" in page and "<figcaption>" in page


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


def test_submissions_are_limited_per_client_and_opt_in_requests_per_number(client, ledger):
    for n in range(5):
        assert submit(client, "/opt-in", phone=f"1650555000{n}", consent="yes").status_code == 200
    refused = submit(client, "/opt-in", phone="16505550009", consent="yes")
    assert refused.status_code == 429 and "Too many" in refused.get_data(as_text=True)
    # An IPv6 /64 is one client: a host holds every address in it.
    ipv6 = [submit(client, "/opt-in", environ={"REMOTE_ADDR": f"2001:db8:1:2::{n:x}"}, phone=f"4477009001{n:02d}", consent="yes")
            for n in range(6)]
    assert [response.status_code for response in ipv6] == [200] * 5 + [429]
    # The same number from many addresses: opt-in requests are limited per number too.
    codes = [submit(client, "/opt-in", environ={"REMOTE_ADDR": f"203.0.113.{n}"}, phone=USER, consent="yes").status_code
             for n in range(7)]
    assert codes == [200] * 5 + [429] * 2


def test_strangers_cannot_use_up_the_owners_budget_to_opt_out(client, ledger):
    for n in range(7):  # strangers, each from their own address, submit the owner's number
        assert submit(client, "/opt-out", environ={"REMOTE_ADDR": f"203.0.113.{n}"}, phone=USER).status_code == 200
    for n in range(5):  # and ask opt-ins for it
        submit(client, "/opt-in", environ={"REMOTE_ADDR": f"198.51.100.{n}"}, phone=USER, consent="yes")
    owner = submit(client, "/opt-out", environ={"REMOTE_ADDR": "192.0.2.10"}, phone=USER)
    assert owner.status_code == 200 and ledger.state(USER).state is State.OPTED_OUT


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


def test_with_the_database_down_the_page_says_so_in_html(app, client, monkeypatch):
    ledger = services_of(app).ledger

    def unreachable(draft):
        raise sa.exc.OperationalError("INSERT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(ledger, "append", unreachable)
    response = submit(client, "/opt-out", phone=USER)
    assert response.status_code == 503 and "text/html" in response.content_type
    assert "Please try again in a minute" in response.get_data(as_text=True)
