"""People known by a phone, a BSUID or both (SPEC §6), driven through POST /webhook with Meta's
`bsuid_*.json` samples: what the ledger records for whom, who is answered and how, what a send
to each identifier is refused, and that every redelivery has its effects once."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from bot.domain.consent import Action, Channel, Marketing, Scope, State
from bot.domain.identity import InvalidIdentifier, mask, mask_numbers, normalize_identifier, normalize_user_id
from bot.domain.policy import MessageKind, Refusal
from bot.outbound.jobs import SendRuntime
from bot.services import services_of
from bot.storage.outbox import Message, QueueName, Template
from bot.storage.schema import consent_events, outbound_messages
from tests.helpers import USER, web_opt_in
from tests.test_staff_api import AUTH
from tests.test_webhook import payload, post, unread

SHEENA_BSUID = "US.13491208655302741918"
SHEENA_NEW_BSUID = "US.13491208655302748862"
SHEENA_NEW_PHONE = "16505559876"
MATEO = "US.20571446901837265093"
MATEO_NEW = "US.20571446901837269157"
MATEO_PHONE = "16505550142"
AUTHENTICATION = Template("login_code", "en_US", [{"type": "body", "parameters": [{"type": "text", "text": "123456"}]}])


def value(body: dict) -> dict:
    return body["entry"][0]["changes"][0]["value"]


def queued(app) -> list[str]:
    with services_of(app).ledger.engine.connect() as conn:
        query = sa.select(outbound_messages.c.id).where(outbound_messages.c.state == "queued").order_by(outbound_messages.c.created_at)
        return list(conn.execute(query).scalars())


def send_queued(app, limit: int | None = None) -> list:
    """Send what is queued (the first `limit` of it) through the real send path: the stored messages afterwards."""
    ids = queued(app)[:limit]
    runtime = SendRuntime(services_of(app))
    runtime.dispatch(ids)
    runtime.shutdown()
    return [services_of(app).outbox.get(message_id) for message_id in ids]


def history(app, identifier: str) -> list[tuple[Action, Scope, Channel, str]]:
    return [(e.action, e.scope, e.channel, e.identifier) for e in services_of(app).ledger.history(identifier)]


def event_count(app) -> int:
    with services_of(app).ledger.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(consent_events)).scalar_one()


def template(app, to: str, template: Template, kind: MessageKind, key: str):
    return services_of(app).outbox.submit(Message(to, kind, template=template), key, "staff:test", QueueName.BULK)


UTILITY = Template("order_update", "en_US")
MARKETING = Template("spring_sale", "en_US")


# -- username users: no phone at all ---------------------------------------------------------


def test_a_username_users_hello_gives_implicit_consent_and_a_welcome_sent_by_recipient(app, client, graph):
    assert post(client, payload("bsuid_text_username_only.json")).status_code == 200
    state = services_of(app).ledger.state(MATEO)
    assert (state.state, state.wa_id, state.user_id) == (State.IMPLICIT, None, MATEO)
    [welcome] = send_queued(app)
    assert (welcome.kind, welcome.state.value, welcome.recipient, welcome.sent_to) == (MessageKind.FREE_FORM, "sent", MATEO, MATEO)
    [request] = graph.requests
    assert request.body["recipient"] == MATEO and "to" not in request.body
    assert post(client, payload("bsuid_text_username_only.json")).status_code == 200  # redelivered
    assert queued(app) == [] and [a for a, *_ in history(app, MATEO)] == [Action.IMPLICIT, Action.OPT_OUT_NOTICE_GIVEN]
    assert unread(app) == []


def test_a_username_users_stop_opts_them_out_with_one_confirmation_by_recipient(app, client, graph):
    post(client, payload("bsuid_text_username_only.json"))
    send_queued(app)
    stop = payload("bsuid_stop_username_only.json")
    assert post(client, stop).status_code == 200 and post(client, stop).status_code == 200  # and its redelivery
    assert services_of(app).ledger.state(MATEO).state is State.OPTED_OUT
    [confirmation] = send_queued(app)
    assert confirmation.kind is MessageKind.STOP_CONFIRMATION and confirmation.state.value == "sent"
    assert graph.requests[-1].body["recipient"] == MATEO
    assert [a for a, *_ in history(app, MATEO)].count(Action.OPT_OUT) == 1
    refused = template(app, MATEO, UTILITY, MessageKind.UTILITY_TEMPLATE, "after-stop")
    assert refused.reason is Refusal.OPTED_OUT


def test_a_stop_under_the_bsuid_stops_the_phone_it_was_seen_with(app, client):
    assert post(client, payload("bsuid_text_with_phone.json")).status_code == 200
    person = services_of(app).ledger.state(USER)
    assert person.identifiers == (USER, SHEENA_BSUID) and person.state is State.IMPLICIT
    linked = [e for e in services_of(app).ledger.history(USER) if e.action is Action.IDENTITY_LINKED]
    [link] = linked  # the BSUID joins the person the phone names
    assert (link.identifier, link.evidence["seen_with"]) == (SHEENA_BSUID, [USER])
    assert link.evidence["payload_id"] == value(payload("bsuid_text_with_phone.json"))["messages"][0]["id"]

    stop = payload("bsuid_stop_username_only.json")  # Sheena, writing without her phone this time
    for item in value(stop)["contacts"]:
        item["user_id"] = SHEENA_BSUID
    value(stop)["messages"][0]["from_user_id"] = SHEENA_BSUID
    assert post(client, stop).status_code == 200
    assert services_of(app).ledger.state(USER).state is State.OPTED_OUT
    refused = template(app, USER, UTILITY, MessageKind.UTILITY_TEMPLATE, "to-the-phone")
    assert refused.reason is Refusal.OPTED_OUT
    # A START under the phone lifts it for both.
    start = payload("start_message.json")
    assert post(client, start).status_code == 200
    assert services_of(app).ledger.state(SHEENA_BSUID).state is State.IMPLICIT


def test_a_username_with_a_shareable_phone_links_all_three_and_is_answered_by_phone(app, client, graph):
    assert post(client, payload("bsuid_text_username_with_phone.json")).status_code == 200
    [welcome] = send_queued(app)
    assert welcome.recipient == USER and graph.requests[-1].body["to"] == USER and "recipient" not in graph.requests[-1].body
    assert services_of(app).ledger.state(SHEENA_BSUID).wa_id == USER


def test_bsuid_only_marketing_stops_are_recorded_for_the_person(app, client):
    services_of(app).ledger.append(web_opt_in(MATEO))
    assert services_of(app).ledger.state(MATEO).marketing is Marketing.ALLOWED
    preferences = payload("bsuid_user_preferences_stop_username_only.json")
    assert post(client, preferences).status_code == 200 and post(client, preferences).status_code == 200
    failed = payload("bsuid_status_failed_131050_username_only.json")
    assert post(client, failed).status_code == 200 and post(client, failed).status_code == 200
    stops = [(a, s, c) for a, s, c, _ in history(app, MATEO) if a is Action.OPT_OUT]
    assert stops == [
        (Action.OPT_OUT, Scope.MARKETING, Channel.WHATSAPP_PREFERENCES), (Action.OPT_OUT, Scope.MARKETING, Channel.WHATSAPP_DELIVERY),
    ]
    state = services_of(app).ledger.state(MATEO)
    assert (state.state, state.marketing) == (State.OPTED_IN, Marketing.OPTED_OUT)
    assert template(app, MATEO, MARKETING, MessageKind.MARKETING_TEMPLATE, "sale").reason is Refusal.MARKETING_OPTED_OUT
    assert unread(app) == []


def test_a_delivered_status_by_user_id_moves_the_message_on(app, client):
    post(client, payload("bsuid_text_username_only.json"))
    [welcome] = send_queued(app)
    delivered = payload("bsuid_status_delivered_to_user_id.json")
    value(delivered)["statuses"][0]["id"] = welcome.meta_message_id
    assert post(client, delivered).status_code == 200
    assert services_of(app).outbox.get(welcome.id).state.value == "delivered"


# -- moves -------------------------------------------------------------------------------------


def test_a_new_number_inherits_the_opt_out_and_the_old_number_names_nobody(app, client):
    post(client, payload("bsuid_text_with_phone.json"))
    post(client, payload("stop_message.json"))
    assert services_of(app).ledger.state(USER).state is State.OPTED_OUT
    replies_before = queued(app)
    change = payload("bsuid_system_user_changed_number.json")
    assert post(client, change).status_code == 200 and post(client, change).status_code == 200
    moved = services_of(app).ledger.state(SHEENA_NEW_PHONE)
    assert moved.state is State.OPTED_OUT and moved.identifiers == (SHEENA_NEW_PHONE, SHEENA_NEW_BSUID)
    assert services_of(app).ledger.state(SHEENA_BSUID).state is State.NONE
    old = services_of(app).ledger.state(USER)
    assert (old.state, old.identifiers) == (State.NONE, ())
    assert template(app, USER, UTILITY, MessageKind.UTILITY_TEMPLATE, "old-number").reason is Refusal.NO_CONSENT
    assert template(app, SHEENA_NEW_PHONE, UTILITY, MessageKind.UTILITY_TEMPLATE, "new-number").reason is Refusal.OPTED_OUT
    retired = [e.identifier for e in services_of(app).ledger.history(SHEENA_NEW_PHONE) if e.action is Action.IDENTITY_RETIRED]
    assert sorted(retired) == sorted([USER, SHEENA_BSUID])
    assert queued(app) == replies_before  # a system message is not the user writing: no reply
    # Whoever has the old number now starts afresh: their hello is their own consent.
    hello = payload("text_message.json")
    value(hello)["messages"][0]["id"] = "wamid.new-owner"
    assert post(client, hello).status_code == 200
    assert services_of(app).ledger.state(USER).state is State.IMPLICIT
    assert services_of(app).ledger.state(SHEENA_NEW_PHONE).state is State.OPTED_OUT


def test_a_system_message_opens_no_session_and_gets_no_reply(app, client):
    assert post(client, payload("bsuid_system_user_changed_user_id.json")).status_code == 200
    assert queued(app) == [] and services_of(app).ledger.state(MATEO_NEW).state is State.NONE
    assert [a for a, *_ in history(app, MATEO_NEW)] == []


def test_a_new_bsuid_keeps_the_person_and_their_consent(app, client):
    post(client, payload("bsuid_stop_username_only.json"))
    assert post(client, payload("bsuid_system_user_changed_user_id.json")).status_code == 200
    assert services_of(app).ledger.state(MATEO_NEW).state is State.OPTED_OUT
    assert services_of(app).ledger.state(MATEO).state is State.NONE


def test_the_legacy_user_id_update_field_is_read(app, client):
    post(client, payload("bsuid_text_with_phone.json"))
    post(client, payload("stop_message.json"))
    assert post(client, payload("bsuid_user_id_update.json")).status_code == 200
    state = services_of(app).ledger.state(SHEENA_NEW_BSUID)
    assert state.state is State.OPTED_OUT and SHEENA_NEW_PHONE in state.identifiers
    assert unread(app) == []


def test_a_contact_info_reply_links_the_shared_phone(app, client):
    post(client, payload("bsuid_stop_username_only.json"))
    assert post(client, payload("bsuid_request_contact_info_reply.json")).status_code == 200
    state = services_of(app).ledger.state(MATEO_PHONE)
    assert state.state is State.OPTED_OUT and state.identifiers == (MATEO_PHONE, MATEO)


def test_a_contact_card_of_someone_else_links_nothing(app, client):
    body = payload("bsuid_request_contact_info_reply.json")
    del value(body)["messages"][0]["contacts"][0]["origin"]
    assert post(client, body).status_code == 200
    assert services_of(app).ledger.state(MATEO_PHONE).state is State.NONE


def test_two_known_people_shown_together_become_one(app, client):
    ledger = services_of(app).ledger
    ledger.append(web_opt_in(SHEENA_BSUID, ref="form-bsuid"))  # known by BSUID only...
    post(client, payload("stop_message.json"))  # ...and, apart, by phone, with a STOP
    assert ledger.state(SHEENA_BSUID).state is State.OPTED_IN
    assert post(client, payload("bsuid_text_with_phone.json")).status_code == 200
    merged = ledger.state(SHEENA_BSUID)
    assert merged.state is State.OPTED_OUT and merged.identifiers == (USER, SHEENA_BSUID)
    assert ledger.state(USER).person_id == merged.person_id
    assert Action.PEOPLE_MERGED in [e.action for e in ledger.history(USER)]
    assert ledger.verify().ok


# -- sending -----------------------------------------------------------------------------------


def test_an_authentication_template_to_a_bsuid_only_person_needs_a_phone(app, client, graph):
    post(client, payload("bsuid_text_username_only.json"))
    refused = template(app, MATEO, AUTHENTICATION, MessageKind.AUTHENTICATION_TEMPLATE, "otp-1")
    assert refused.reason is Refusal.NEEDS_PHONE_NUMBER
    assert template(app, MATEO, UTILITY, MessageKind.UTILITY_TEMPLATE, "order-1").queued
    post(client, payload("bsuid_request_contact_info_reply.json"))  # once the phone is shared, it goes by phone
    allowed = template(app, MATEO, AUTHENTICATION, MessageKind.AUTHENTICATION_TEMPLATE, "otp-2")
    assert allowed.queued
    send_queued(app)
    assert graph.requests[-1].body["to"] == MATEO_PHONE


def test_a_131062_answer_fails_the_message_with_needs_phone_number(app, client, graph):
    post(client, payload("bsuid_text_username_only.json"))
    graph.fail[MATEO] = 131062
    submission = template(app, MATEO, UTILITY, MessageKind.UTILITY_TEMPLATE, "order-1")
    sent = {m.id: m for m in send_queued(app)}
    assert (sent[submission.message_id].state.value, sent[submission.message_id].reason) == ("failed", "needs_phone_number")


# -- bad input -----------------------------------------------------------------------------------


MALFORMED = ["USA.123456", "us.123456", "ZZ.123456", "US." + "1" * 129, "US.12-34", "US."]


@pytest.mark.parametrize(
    "bad", [*MALFORMED, "US.ENT.123"],
    ids=["three-letters", "lower-case", "no-such-country", "too-long", "illegal-character", "empty", "parent-as-user"],
)
def test_a_malformed_bsuid_in_a_webhook_is_kept_as_unread(app, client, bad):
    body = payload("bsuid_stop_username_only.json")
    value(body)["messages"][0]["from_user_id"] = bad
    value(body)["contacts"][0]["user_id"] = bad
    assert post(client, body).status_code == 200
    assert len(unread(app)) == 1 and event_count(app) == 0


@pytest.mark.parametrize("bad", MALFORMED, ids=["three-letters", "lower-case", "no-such-country", "too-long", "illegal-character", "empty"])
def test_a_malformed_bsuid_is_refused_at_the_api_and_rejected_at_import(app, client, runner, tmp_path, bad):
    answer = client.get(f"/api/v1/consents/{bad}", headers=AUTH)
    assert answer.status_code == 422 and answer.get_json()["field"] == "wa_id"
    opt_out = {"wa_id": bad, "action": "opt_out", "channel": "api"}
    answer = client.post("/api/v1/consents", headers=AUTH, json=opt_out)
    assert answer.status_code == 422 and answer.get_json()["field"] == "wa_id"
    csv = tmp_path / "consents.csv"
    csv.write_text(f"wa_id,channel,consent_text,evidence,occurred_at\n{bad},paper,Yes to offers from Acme Bakery,form 7,2026-01-05T10:00:00Z\n")
    result = runner.invoke(args=["consent", "import", str(csv)])
    assert "consents.csv:2: rejected: wa_id: invalid" in result.output and event_count(app) == 0


def test_the_staff_api_answers_by_either_identifier(app, client):
    post(client, payload("bsuid_text_with_phone.json"))
    by_bsuid = client.get(f"/api/v1/consents/{SHEENA_BSUID}", headers=AUTH).get_json()
    by_phone = client.get(f"/api/v1/consents/{USER}", headers=AUTH).get_json()
    assert by_bsuid["wa_id"] == by_phone["wa_id"] == USER and by_bsuid["user_id"] == by_phone["user_id"] == SHEENA_BSUID
    assert by_bsuid["state"] == "implicit" and by_bsuid["history"] == by_phone["history"]
    unknown = client.get("/api/v1/consents/US.999999999", headers=AUTH).get_json()
    assert (unknown["wa_id"], unknown["user_id"], unknown["state"]) == (None, "US.999999999", "none")
    recorded = client.post("/api/v1/consents", headers=AUTH, json={"wa_id": MATEO, "action": "opt_out", "channel": "api"})
    assert recorded.status_code == 201 and recorded.get_json()["user_id"] == MATEO and recorded.get_json()["wa_id"] is None


def test_consent_show_and_export_take_a_bsuid(app, client, runner):
    post(client, payload("bsuid_text_with_phone.json"))
    shown = runner.invoke(args=["consent", "show", SHEENA_BSUID])
    assert shown.exit_code == 0 and f"wa_id:        {USER}" in shown.output and "identity_linked" in shown.output
    exported = runner.invoke(args=["consent", "export", "--wa-id", SHEENA_BSUID])
    header, *rows = exported.output.splitlines()
    assert "user_id" in header.split(",") and len(rows) == 3  # the link, the session, the welcome's notice


# -- the chain covers who is who -------------------------------------------------------------


def test_tampering_with_an_identity_link_is_detected(app, client):
    post(client, payload("bsuid_text_with_phone.json"))
    engine = services_of(app).ledger.engine
    assert services_of(app).ledger.verify().ok
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ALTER TABLE consent_events DISABLE TRIGGER consent_events_append_only")
        else:
            conn.exec_driver_sql("DROP TRIGGER consent_events_no_update")
        conn.execute(
            consent_events.update()
            .where(consent_events.c.action == "identity_linked", consent_events.c.identifier == SHEENA_BSUID)
            .values(identifier="US.99999999999999999999")
        )
    verification = services_of(app).ledger.verify()
    assert not verification.ok and "altered" in verification.problem


# -- masking ---------------------------------------------------------------------------------------


def test_bsuids_are_masked_beyond_their_country_code():
    assert mask(MATEO) == "US." + "*" * 20
    assert mask_numbers(f"GET /api/v1/consents/{MATEO} HTTP/1.1") == "GET /api/v1/consents/US." + "*" * 20 + " HTTP/1.1"
    assert mask_numbers("GET /api/v1/consents/US%2E20571446901837265093") == "GET /api/v1/consents/US." + "*" * 22


def test_identifiers_are_read_as_meta_writes_them():
    assert normalize_identifier(" +1 650-555-1234 ") == USER
    assert normalize_identifier(MATEO) == MATEO
    assert normalize_identifier("US.ENT.123abc") == "US.ENT.123abc"
    assert normalize_user_id("US.ENT.123abc", parent=True) == "US.ENT.123abc"
    with pytest.raises(InvalidIdentifier) as raised:
        normalize_identifier("ZZ.20571446901837265093")
    assert "20571446901837265093" not in str(raised.value)
    with pytest.raises(InvalidIdentifier):
        normalize_user_id("US.ENT.123abc")
