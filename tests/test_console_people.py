"""The console's People and Review pages (SPEC §8) on both databases: finding a person by phone
or BSUID, their page (state, window, identifiers, readable history, messages with what allowed
or refused them), recording consent as a staff member, and the possible-opt-out review queue,
whose decisions are ledger events."""
from __future__ import annotations

import re
import uuid

import pytest
import sqlalchemy as sa

from bot.console.wording import REFUSALS, evidence_items
from bot.domain.consent import Action, Channel, EventDraft, Scope, State
from bot.domain.policy import MessageKind, Refusal
from bot.domain.staff import Role
from bot.services import services_of
from bot.storage.outbox import Message, Template
from bot.storage.schema import consent_events
from tests.helpers import OTHER_USER, USER, web_opt_in
from tests.test_console_auth import csrf_of, page_text, post_form, sign_in
from tests.test_staff_accounts import add_staff
from tests.test_webhook import payload, post

BSUID = "US.13491208655302741918"
OPERATOR, VIEWER = "olga@example.com", "vik@example.com"


@pytest.fixture
def operator(app, client):
    add_staff(app, OPERATOR, Role.OPERATOR)
    sign_in(client, OPERATOR)
    return client


@pytest.fixture
def viewer(app):
    add_staff(app, VIEWER, Role.VIEWER)
    client = app.test_client()
    sign_in(client, VIEWER)
    return client


def possible_opt_out(app, client, text: str = "why do you keep messaging me?", sender: str = OTHER_USER) -> str:
    """The bot receives a message it reads as a possible opt-out; its event id."""
    body = payload("possible_opt_out.json")
    message = body["entry"][0]["changes"][0]["value"]["messages"][0]
    message["text"]["body"] = text
    message["from"] = sender
    message["id"] = f"wamid.{uuid.uuid4().hex}"
    body["entry"][0]["changes"][0]["value"]["contacts"][0]["wa_id"] = sender
    assert post(client, body).status_code == 200
    [event] = [e for e in services_of(app).ledger.history(sender) if e.action is Action.POSSIBLE_OPT_OUT and e.consent_text == text]
    return event.event_id


def events(app, action: Action) -> list[sa.Row]:
    with services_of(app).engine.connect() as conn:
        return conn.execute(sa.select(consent_events).where(consent_events.c.action == action.value).order_by(consent_events.c.seq)).all()


# -- finding a person ------------------------------------------------------------------------


def test_a_person_is_found_by_phone_written_any_way_and_by_bsuid(app, viewer):
    ledger = services_of(app).ledger
    ledger.append(web_opt_in())
    ledger.append(EventDraft(identifier=BSUID, action=Action.OPT_OUT, channel=Channel.WHATSAPP_KEYWORD, source_ref="stop-b",
                             recorded_by="webhook", consent_text="STOP", evidence={"message_id": "wamid.b"}))
    by_phone = viewer.get("/console/people", query_string={"q": "+1 (650) 555-1234"})
    assert (by_phone.status_code, by_phone.headers["Location"]) == (302, f"/console/people/{USER}")
    by_bsuid = viewer.get("/console/people", query_string={"q": f" {BSUID} "})
    assert by_bsuid.headers["Location"] == f"/console/people/{BSUID}"
    assert "Opted out of all messages — by replying “STOP” on WhatsApp" in page_text(viewer.get(by_bsuid.headers["Location"]))

    unknown = viewer.get("/console/people", query_string={"q": OTHER_USER})
    assert unknown.status_code == 200 and f"No one is known by {OTHER_USER} yet" in page_text(unknown)
    invalid = viewer.get("/console/people", query_string={"q": "12ab"})
    assert invalid.status_code == 422 and "Invalid phone number" in page_text(invalid)
    assert viewer.get("/console/people/not-a-number").status_code == 404


def test_a_persons_page_shows_state_window_identifiers_history_and_messages(app, client, viewer):
    services = services_of(app)
    assert post(client, payload("text_message.json")).status_code == 200  # opens the window, gets the welcome
    opt_in = services.ledger.append(web_opt_in())  # evidence: form signup, ip 203.0.113.9
    services.ledger.append(EventDraft(identifier=USER, action=Action.OPT_OUT, scope=Scope.MARKETING, channel=Channel.WHATSAPP_BUTTON,
                                      source_ref="stop-promo", recorded_by="webhook", consent_text="Stop promotions",
                                      evidence={"message_id": "wamid.promo"}))
    utility = services.outbox.submit(Message(USER, MessageKind.UTILITY_TEMPLATE, template=Template("order_update", "en")), "u1", "staff:ann@example.com")
    services.outbox.mark_sent(utility.message_id, "wamid.sent1", opt_in.event_id)
    refused = services.outbox.submit(Message(USER, MessageKind.MARKETING_TEMPLATE, template=Template("spring_sale", "en")), "m1", "staff:ann@example.com")
    assert refused.reason is Refusal.MARKETING_OPTED_OUT

    page = viewer.get(f"/console/people/{USER}")
    text, html = page_text(page), page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Consent Opted in" in text and "Marketing Opted out" in text
    assert re.search(r"24-hour window Open until \d+ \w+ \d{4} \d\d:\d\d UTC \((23 h 5\d|24 h 0) min left\)", text)
    assert f"Phone {USER}" in text and "Told how to opt out Yes" in text
    assert "Opted out of marketing — by tapping “Stop promotions” on WhatsApp" in text
    assert "Opted in — on the website" in text and "Yes, send me order updates and offers from Acme Bakery on WhatsApp." in text
    assert "Started a conversation (implicit consent) — by writing on WhatsApp" in text
    assert "Form signup" in text and "IP address 203.0.113.9" in text  # evidence as a definition list
    assert '"form"' not in html and "opt_out" not in text and "whatsapp_button" not in text  # no raw codes
    assert "Sent Template order_update (en)" in text and "by ann@example.com" in text
    assert f'href="#event-{opt_in.event_id}"' in html and f'id="event-{opt_in.event_id}"' in html
    assert "Refused Template spring_sale (en)" in text and REFUSALS[Refusal.MARKETING_OPTED_OUT] in text
    assert "<form" not in html.split("<main>")[1]  # a viewer gets no form to change anything


def test_every_refusal_reason_has_a_sentence():
    assert set(REFUSALS) == set(Refusal) and all(sentence.endswith(".") for sentence in REFUSALS.values())


def test_the_people_and_review_sections_are_links(operator):
    html = operator.get("/console").get_data(as_text=True)
    assert 'href="/console/people"' in html and 'href="/console/review"' in html
    assert 'aria-current="page">People' in operator.get("/console/people").get_data(as_text=True)


# -- recording consent -----------------------------------------------------------------------


def record_form(client, identifier: str, **fields: str):
    page = client.get(f"/console/people/{identifier}")
    request_id = re.search(r'name="request" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    return client.post(f"/console/people/{identifier}/consent", data={"csrf_token": csrf_of(page), "request": request_id, **fields})


def test_an_operator_records_an_opt_in_and_an_opt_out_as_themselves(app, operator):
    recorded = record_form(operator, USER, action="opt_in", channel="paper", scope="all",
                           consent_text="Yes, Acme Bakery may message me on WhatsApp.", reference="form 1142", note="", occurred_at="2026-11-20T09:30")
    assert recorded.status_code == 302 and recorded.headers["Location"].startswith(f"/console/people/{USER}?recorded=opt_in#event-")
    [opt_in] = events(app, Action.OPT_IN)
    assert (opt_in.recorded_by, opt_in.channel, opt_in.consent_text) == (f"staff:{OPERATOR}", "paper", "Yes, Acme Bakery may message me on WhatsApp.")
    assert opt_in.evidence == '{"reference":"form 1142"}' and opt_in.occurred_at.isoformat().startswith("2026-11-20T09:30")
    assert "Opt-in recorded." in page_text(operator.get(recorded.headers["Location"]))

    assert record_form(operator, USER, action="opt_out", channel="api", scope="marketing", note="asked on the phone").status_code == 302
    [opt_out] = events(app, Action.OPT_OUT)
    assert (opt_out.recorded_by, opt_out.scope, opt_out.evidence) == (f"staff:{OPERATOR}", "marketing", '{"note":"asked on the phone"}')
    state = services_of(app).ledger.state(USER)
    assert (state.state, state.marketing.value) == (State.OPTED_IN, "opted_out")


@pytest.mark.parametrize(
    "fields,says",
    [
        ({"channel": "paper", "reference": "form 1"}, "Consent text: must be a non-empty string."),
        ({"channel": "paper", "consent_text": "Yes please"}, "An opt-in needs evidence of how it was collected."),
        ({"channel": "whatsapp_keyword", "consent_text": "Yes", "reference": "r"}, "cannot record consent collected through WhatsApp"),
        ({"channel": "paper", "consent_text": "Yes", "reference": "r", "occurred_at": "2999-01-01T00:00"}, "in the future"),
    ],
    ids=["no-consent-text", "no-evidence", "whatsapp", "future"],
)
def test_a_console_opt_in_follows_the_staff_apis_rules(app, operator, fields, says):
    refused = record_form(operator, USER, action="opt_in", scope="all", **fields)
    assert refused.status_code == 422 and says in page_text(refused)
    assert events(app, Action.OPT_IN) == []
    assert fields.get("reference", "") in refused.get_data(as_text=True)  # the form keeps what was typed


def test_a_repeated_submission_records_once(app, operator):
    page = operator.get(f"/console/people/{USER}")
    form = {"csrf_token": csrf_of(page), "request": re.search(r'name="request" value="([^"]+)"', page.get_data(as_text=True)).group(1),
            "action": "opt_out", "channel": "api", "scope": "all"}
    assert [operator.post(f"/console/people/{USER}/consent", data=form).status_code for _ in range(2)] == [302, 302]
    assert len(events(app, Action.OPT_OUT)) == 1


def test_a_viewer_sees_no_forms_and_a_forged_post_is_refused(app, viewer):
    page = viewer.get(f"/console/people/{USER}")
    assert page.status_code == 200 and "Record opt-in" not in page_text(page)
    form = {"csrf_token": csrf_of(page), "request": "9d4b2f5e-1f3c-4a8e-9a51-0c2f3e4d5b6a", "action": "opt_out", "channel": "api"}
    assert viewer.post(f"/console/people/{USER}/consent", data=form).status_code == 403
    review = viewer.get("/console/review")
    item = possible_opt_out(app, app.test_client())
    review = viewer.get("/console/review")
    assert "why do you keep messaging me?" in page_text(review) and "Confirm opt-out" not in page_text(review)
    assert viewer.post(f"/console/review/{item}", data={"csrf_token": csrf_of(review), "decision": "confirm"}).status_code == 403
    assert events(app, Action.OPT_OUT) == [] and events(app, Action.POSSIBLE_OPT_OUT_DISMISSED) == []


def test_a_post_without_the_csrf_token_is_refused(app, operator):
    item = possible_opt_out(app, app.test_client())
    assert operator.post(f"/console/people/{USER}/consent", data={"action": "opt_out", "channel": "api"}).status_code == 403
    assert operator.post(f"/console/review/{item}", data={"decision": "confirm"}).status_code == 403
    assert events(app, Action.OPT_OUT) == []


# -- review ----------------------------------------------------------------------------------


def test_the_queue_shows_the_oldest_first_with_the_users_words(app, operator, clock):
    first = possible_opt_out(app, app.test_client(), "why do you keep messaging me?")
    second = possible_opt_out(app, app.test_client(), "I never agreed to this", sender=USER)
    text = page_text(operator.get("/console/review"))
    assert "Waiting (2)" in text
    assert text.index("why do you keep messaging me?") < text.index("I never agreed to this")
    html = operator.get("/console/review").get_data(as_text=True)
    assert html.index(f"item-{first}") < html.index(f"item-{second}")


def test_confirming_records_an_opt_out_with_the_users_words_and_the_reviewer(app, operator):
    item = possible_opt_out(app, app.test_client())
    confirmed = post_form(operator, "/console/review", f"/console/review/{item}", decision="confirm")
    assert confirmed.status_code == 302
    [opt_out] = events(app, Action.OPT_OUT)
    assert (opt_out.recorded_by, opt_out.scope, opt_out.channel, opt_out.consent_text) == (
        f"staff:{OPERATOR}", "all", "api", "why do you keep messaging me?")
    assert opt_out.source_ref == f"review:{item}"
    assert '"said":"why do you keep messaging me?"' in opt_out.evidence and f'"reviewed_by":"staff:{OPERATOR}"' in opt_out.evidence
    assert '"message_id":"wamid.' in opt_out.evidence and f'"possible_opt_out_event_id":"{item}"' in opt_out.evidence
    assert services_of(app).ledger.state(OTHER_USER).state is State.OPTED_OUT

    queue = page_text(operator.get(confirmed.headers["Location"]))
    assert f"Confirmed as an opt-out: {OTHER_USER} gets no more messages" in queue and "Waiting (0)" in queue
    assert f"Confirmed as an opt-out by {OPERATOR}" in queue
    person = page_text(operator.get(f"/console/people/{OTHER_USER}"))
    assert "Consent Opted out" in person and "Opted out of all messages — recorded by staff" in person
    assert "Their words why do you keep messaging me?" in person and f"Reviewed by staff:{OPERATOR}" in person


def test_dismissing_is_recorded_and_the_item_leaves_the_queue(app, operator):
    item = possible_opt_out(app, app.test_client())
    kept = possible_opt_out(app, app.test_client(), "why do you have my number", sender=USER)
    assert post_form(operator, "/console/review", f"/console/review/{item}", decision="dismiss").status_code == 302
    [dismissal] = events(app, Action.POSSIBLE_OPT_OUT_DISMISSED)
    assert (dismissal.recorded_by, dismissal.source_ref) == (f"staff:{OPERATOR}", f"review:{item}")
    assert services_of(app).ledger.state(OTHER_USER).state is State.IMPLICIT and events(app, Action.OPT_OUT) == []
    page = operator.get("/console/review")
    html, text = page.get_data(as_text=True), page_text(page)
    assert f"item-{item}" not in html and f"item-{kept}" in html and "Waiting (1)" in text
    assert f"Dismissed: not an opt-out by {OPERATOR}" in text
    assert "Possible opt-out reviewed: not an opt-out — recorded by staff" in page_text(operator.get(f"/console/people/{OTHER_USER}"))

    # decided once: the other decision afterwards changes nothing
    again = post_form(operator, "/console/review", f"/console/review/{item}", decision="confirm")
    assert "decided by someone else meanwhile" in page_text(operator.get(again.headers["Location"]))
    assert events(app, Action.OPT_OUT) == []
    assert post_form(operator, "/console/review", f"/console/review/{kept}", decision="maybe").status_code == 400
    assert post_form(operator, "/console/review", "/console/review/no-such-event", decision="confirm").status_code == 404


def test_an_item_from_someone_who_opted_out_since_is_shown_as_settled(app, operator):
    possible_opt_out(app, app.test_client())
    services_of(app).ledger.append(EventDraft(identifier=OTHER_USER, action=Action.OPT_OUT, channel=Channel.WEB, source_ref="page-out",
                                              recorded_by="page", evidence={"form": "opt-out page"}))
    assert "Already settled They have opted out of all messages since." in page_text(operator.get("/console/review"))


def test_a_matched_sentence_pattern_is_not_shown_as_its_regular_expression():
    assert evidence_items({"keyword": r"why (?:\w+ ){0,4}?keep", "language": "en"}) == [
        ("Keyword", "a sentence pattern of the keyword file"), ("Language", "en"),
    ]
    assert evidence_items({"keyword": "STOP", "confirmed_by": {"code": "A1"}}) == [("Keyword", "STOP"), ("Confirmed from WhatsApp", [("Code", "A1")])]
