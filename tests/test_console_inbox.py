"""The console's Inbox (SPEC §9) on both databases, fed by real webhook bodies: conversations
newest first with their unread counts, a thread with both sides (media, locations, contacts,
reactions, button replies, edits, deletions, what a consent keyword did; every message sent or
refused with its state and reason), replies through the consent gate (free-form inside the
window, a template outside it, refusals in words), and taking a conversation over and releasing it."""
from __future__ import annotations

import re
import time
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from bot.console.wording import REFUSALS
from bot.domain.policy import Refusal
from bot.domain.staff import Role
from bot.services import services_of
from bot.storage.inbox import Inbox
from bot.storage.schema import conversations, inbound_messages, outbound_messages
from tests import test_console_campaigns
from tests.helpers import OTHER_USER, USER, web_opt_in
from tests.test_console_auth import csrf_of, page_text, sign_in
from tests.test_staff_accounts import add_staff
from tests.test_webhook import payload, post

OPERATOR, VIEWER = "ana@example.com", "vik@example.com"
THIRD_USER = "5511987654321"
BSUID = "US.13491208655302741918"
catalog_app = test_console_campaigns.catalog_app  # the app with Meta's template catalog, a fixture


@pytest.fixture
def operator(app):
    return signed_in(app, OPERATOR, Role.OPERATOR)


@pytest.fixture
def viewer(app):
    return signed_in(app, VIEWER, Role.VIEWER)


def signed_in(app, email: str, role: Role):
    add_staff(app, email, role)
    client = app.test_client()
    assert sign_in(client, email).status_code == 302
    return client


def written(app, sender: str = USER, ago: timedelta = timedelta(0), message_id: str | None = None, **message) -> str:
    """`sender` writes `message` (a text by default) `ago`, through the signed webhook; its Meta id."""
    body = payload("text_message.json")
    value = body["entry"][0]["changes"][0]["value"]
    value["contacts"][0]["wa_id"] = sender
    message_id = message_id or f"wamid.{uuid.uuid4().hex}"
    sent = str(int(time.time() - ago.total_seconds()))
    value["messages"] = [{"from": sender, "id": message_id, "timestamp": sent, **(message or {"type": "text", "text": {"body": "hello"}})}]
    assert post(app.test_client(), body).status_code == 200
    return message_id


def text(body: str) -> dict:
    return {"type": "text", "text": {"body": body}}


def reply(client, identifier: str, chosen: str | None = None, **form: str):
    """Send the reply form of the conversation's page (with the template `chosen`), as the browser does."""
    page = client.get(f"/console/inbox/{identifier}", query_string={"template": chosen} if chosen else None)
    request_id = re.search(r'name="request" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    return client.post(f"/console/inbox/{identifier}/reply", data={"csrf_token": csrf_of(page), "request": request_id, **form})


def outbound(app) -> list[sa.Row]:
    with services_of(app).engine.connect() as conn:
        return conn.execute(sa.select(outbound_messages).order_by(outbound_messages.c.created_at)).all()


def conversation_row(app, identifier: str = USER) -> sa.Row:
    person = services_of(app).ledger.state(identifier).person_id
    with services_of(app).engine.connect() as conn:
        return conn.execute(sa.select(conversations).where(conversations.c.person_id == person)).one()


def listed(client, **query: str) -> list[str]:
    """The inbox's conversations, top to bottom, as their first identifier."""
    html = client.get("/console/inbox", query_string=query).get_data(as_text=True)
    return re.findall(r'class="conversation-name" href="/console/inbox/([^"]+)"', html)


# -- the list ------------------------------------------------------------------------------------


def test_a_question_shows_unread_until_the_conversation_is_opened(app, operator):
    written(app, **text("Hi, do you deliver on Sundays?"))
    inbox = operator.get("/console/inbox")
    assert inbox.status_code == 200
    assert f"{USER} 1 unread" in page_text(inbox) and "Hi, do you deliver on Sundays?" in page_text(inbox)
    assert re.search(r'>Inbox <span class="count"[^>]*>1</span>', operator.get("/console/people").get_data(as_text=True))

    thread = page_text(operator.get(f"/console/inbox/{USER}"))
    assert "Hi, do you deliver on Sundays?" in thread
    assert "Queued" in thread and "by the bot (from WhatsApp)" in thread  # the welcome, the bot's own reply
    assert "unread" not in page_text(operator.get("/console/inbox"))
    assert 'class="count"' not in operator.get("/console/inbox").get_data(as_text=True)
    assert conversation_row(app).read_at is not None


def test_conversations_are_newest_first_and_the_unread_filter_keeps_the_unread(app, operator):
    written(app, USER, timedelta(minutes=30))
    written(app, OTHER_USER, timedelta(minutes=20))
    assert listed(operator) == [OTHER_USER, USER]
    operator.get(f"/console/inbox/{OTHER_USER}")
    assert listed(operator, show="unread") == [USER]
    written(app, USER, timedelta(minutes=10), **text("still there?"))
    assert listed(operator) == [USER, OTHER_USER]
    assert "still there? " in page_text(operator.get("/console/inbox")) and f"{USER} 2 unread" in page_text(operator.get("/console/inbox"))


def test_a_message_sent_before_staff_read_but_arriving_after_stays_unread(app, operator):
    written(app, ago=timedelta(seconds=30))
    operator.get(f"/console/inbox/{USER}")  # read up to the message shown, 30 seconds old
    written(app, ago=timedelta(seconds=20), **text("late, Meta retried it"))  # sent after that one, before the page was opened
    assert f"{USER} 1 unread" in page_text(operator.get("/console/inbox"))


def test_pages_of_older_conversations_follow_each_other(app, operator):
    people = [f"1650555{n:04d}" for n in range(5)]
    for n, person in enumerate(people):
        written(app, person, timedelta(minutes=10 - n))
    inbox = Inbox(services_of(app).engine)
    first = inbox.page(size=2)
    second = inbox.page(first.older, size=2)
    third = inbox.page(second.older, size=2)
    shown = [c.identifiers[0] for page in (first, second, third) for c in page.conversations]
    assert shown == people[::-1] and third.older is None
    older = operator.get("/console/inbox", query_string={"older": first.older.token()})
    assert "Newest conversations" in page_text(older)
    assert operator.get("/console/inbox", query_string={"older": "yesterday"}).status_code == 404


def test_a_person_found_to_be_another_has_one_conversation(app, operator):
    written(app, USER, timedelta(minutes=3), **text("from my phone"))
    for name, ago, words in (("bsuid_text_username_only.json", 2, "from my username"), ("bsuid_text_with_phone.json", 1, "from both")):
        body = payload(name)
        value = body["entry"][0]["changes"][0]["value"]
        value["contacts"][0]["user_id"] = value["messages"][0]["from_user_id"] = BSUID
        value["messages"][0].update(timestamp=str(int(time.time()) - 60 * ago), text={"body": words})
        assert post(app.test_client(), body).status_code == 200
    assert listed(operator) == [USER]  # the username's conversation is the phone's person's now
    assert f"{USER} 3 unread" in page_text(operator.get("/console/inbox"))
    thread = page_text(operator.get(f"/console/inbox/{BSUID}"))
    assert thread.index("from my phone") < thread.index("from my username") < thread.index("from both")
    assert f"from {BSUID}" in thread  # written under the username
    assert "unread" not in page_text(operator.get("/console/inbox"))
    page = operator.get(f"/console/inbox/{USER}")
    operator.post(f"/console/inbox/{USER}/take", data={"csrf_token": csrf_of(page)})
    with services_of(app).engine.connect() as conn:  # the merge made one conversation of the two, and moved the messages
        assert conn.execute(sa.select(conversations.c.handled_by)).scalars().all() == [f"staff:{OPERATOR}"]
        assert len(set(conn.execute(sa.select(inbound_messages.c.person_id)).scalars())) == 1


# -- the thread ----------------------------------------------------------------------------------


def test_stop_shows_what_it_did_and_a_reply_after_it_is_refused_in_words(app, operator):
    assert post(app.test_client(), payload("stop_message.json")).status_code == 200
    thread = page_text(operator.get(f"/console/inbox/{USER}"))
    assert "STOP Consent keyword: recorded as an opt-out of all messages · in their history" in thread
    assert "Opted out" in thread

    refused = reply(operator, USER, text="Sorry to see you go! Can we ask why?")
    assert refused.status_code == 302 and refused.headers["Location"].endswith("#reply")
    page = page_text(operator.get(refused.headers["Location"]))
    assert re.search(r"Not sent\. They had opted out of all messages \(by replying “STOP” on WhatsApp, \d+ \w+ \d{4} \d\d:\d\d UTC\)\.", page)
    assert f"Sorry to see you go! Can we ask why? {REFUSALS[Refusal.OPTED_OUT]} Refused" in page
    [*_, row] = outbound(app)
    assert (row.state, row.reason, row.requested_by) == ("blocked", "opted_out", f"staff:{OPERATOR}")


def test_a_reply_inside_the_window_is_queued_once_as_the_staff_member(app, operator):
    written(app, **text("Can I pick up at 5?"))
    page = operator.get(f"/console/inbox/{USER}")
    assert re.search(r"The 24-hour window is open for (23 h 59|24 h 0) min", page_text(page))
    request_id = re.search(r'name="request" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    form = {"csrf_token": csrf_of(page), "request": request_id, "text": "Yes, see you at 5!"}
    sent = [operator.post(f"/console/inbox/{USER}/reply", data=form) for _ in range(2)]  # a double click
    assert [answer.status_code for answer in sent] == [302, 302] and sent[0].headers["Location"] == sent[1].headers["Location"]
    replies = [row for row in outbound(app) if row.requested_by == f"staff:{OPERATOR}"]
    assert [(row.state, row.kind, row.content, row.queue) for row in replies] == [("queued", "free_form", '{"text": "Yes, see you at 5!"}', "replies")]
    thread = page_text(operator.get(sent[0].headers["Location"]))
    assert "Sent to the queue" in thread and "Yes, see you at 5! Queued" in thread and f"by {OPERATOR}" in thread
    assert thread.index("Can I pick up at 5?") < thread.index("Yes, see you at 5!")

    other = operator.post(f"/console/inbox/{USER}/reply", data={**form, "text": "changed my mind"})
    assert other.status_code == 409 and "This form was sent already" in page_text(other)
    empty = reply(operator, USER, text="   ")
    assert empty.status_code == 422 and "Reply: must be a non-empty string." in page_text(empty)


def test_outside_the_window_only_a_template_is_offered_and_free_form_is_refused(app, operator):
    written(app, ago=timedelta(hours=25), **text("are you open on monday?"))
    page = operator.get(f"/console/inbox/{USER}")
    html = page.get_data(as_text=True)
    assert "The 24-hour window is closed (they last wrote" in page_text(page)
    assert 'name="text"' not in html and 'name="name"' in html and 'name="body_lines"' in html  # no catalog: typed

    forged = reply(operator, USER, text="We are!")  # the window closed as the form was typed: the gate refuses it
    assert "Not sent. The 24-hour window was closed" in page_text(operator.get(forged.headers["Location"]))
    sent = reply(operator, USER, name="order_update", language="en_US", category="utility", body_lines="#1042\nready")
    assert sent.status_code == 302
    *_, row = outbound(app)
    assert (row.kind, row.requested_by, row.state) == ("utility", f"staff:{OPERATOR}", "queued")
    assert '"parameters": [{"type": "text", "text": "#1042"}, {"type": "text", "text": "ready"}]' in row.content
    assert "Template order_update (en_US) Queued" in page_text(operator.get(sent.headers["Location"]))


def test_outside_the_window_a_template_is_chosen_from_the_catalog(catalog_app):
    operator = signed_in(catalog_app, OPERATOR, Role.OPERATOR)
    written(catalog_app, ago=timedelta(hours=30))
    choose = page_text(operator.get(f"/console/inbox/{USER}"))
    assert "order_update (en_US) · utility" in choose and "winter_sale" not in choose
    form = operator.get(f"/console/inbox/{USER}", query_string={"template": "order_update/en_US"})
    assert "Your order {{1}} is {{2}}." in page_text(form)
    assert re.findall(r'name="(body\.\d)"', form.get_data(as_text=True)) == ["body.1", "body.2"]

    one_missing = reply(operator, USER, "order_update/en_US", template="order_update/en_US", **{"body.1": "#7", "body.2": " "})
    assert one_missing.status_code == 422 and "takes 2 body parameter(s), 1 given" in page_text(one_missing)
    assert outbound(catalog_app) == []
    sent = reply(operator, USER, "order_update/en_US", template="order_update/en_US", **{"body.1": "#7", "body.2": "ready"})
    assert sent.status_code == 302
    assert outbound(catalog_app)[-1].requested_by == f"staff:{OPERATOR}"
    assert reply(operator, USER, "order_update/en_US", template="winter_sale/en_US").status_code == 404


def test_media_locations_contacts_reactions_and_buttons_are_described(app, operator):
    asked = written(app, **text("Which cake is this?"))
    written(app, type="image", image={"caption": "this one", "mime_type": "image/jpeg", "sha256": "abc", "id": "1003383421387256"})
    written(app, type="document", document={"filename": "order.pdf", "mime_type": "application/pdf", "id": "4455"})
    written(app, type="location", location={"latitude": 38.7223, "longitude": -9.1393, "name": "Bakery", "address": "Rua Augusta 1"})
    written(app, type="contacts", contacts=[{"name": {"formatted_name": "Ann Smith"}, "phones": [{"phone": "+1 650 555 0100"}]}])
    written(app, type="reaction", reaction={"message_id": asked, "emoji": "👍"})
    written(app, type="sticker", sticker={"mime_type": "image/webp", "id": "77"}, context={"id": asked})
    assert post(app.test_client(), payload("interactive_button_reply.json")).status_code == 200
    thread = page_text(operator.get(f"/console/inbox/{USER}"))
    assert "📷 Photo (image/jpeg) · Meta media id 1003383421387256 this one" in thread
    assert "📄 Document “order.pdf” (application/pdf) · Meta media id 4455" in thread
    assert "📍 Location: Bakery, Rua Augusta 1 (38.7223, -9.1393)" in thread
    assert "👤 Contact: Ann Smith (+1 650 555 0100)" in thread
    assert "Reacted 👍 to “Which cake is this?”" in thread
    assert "↩ Replying to “Which cake is this?” 🖼️ Sticker (image/webp) · Meta media id 77" in thread
    assert "Tapped “Unsubscribe” Consent keyword: recorded as an opt-out" in thread
    assert "Tapped “Unsubscribe”" in page_text(operator.get("/console/inbox"))  # the last message, in the list


def test_edits_and_deletions_show_as_such(app, operator):
    kept = written(app, **text("I want 2 croissants"))
    gone = written(app, **text("my card number is 4111"))
    written(app, type="edit", edit={"original_message_id": kept, "message": {"type": "text", "text": {"body": "I want 3 croissants"}}})
    written(app, type="revoke", revoke={"original_message_id": gone})
    thread = page_text(operator.get(f"/console/inbox/{USER}"))
    assert "I want 3 croissants" in thread and re.search(r"I want 3 croissants \d+ \w+ \d{4} \d\d:\d\d UTC · edited", thread)
    assert "I want 2 croissants" not in thread and "4111" not in thread
    assert "This message was deleted" in thread


# -- who handles it ----------------------------------------------------------------------------------


def test_taking_over_holds_automated_replies_until_released(app, operator):
    written(app)
    page = operator.get(f"/console/inbox/{USER}")
    assert "Automated replies answer this conversation" in page_text(page)
    taken = operator.post(f"/console/inbox/{USER}/take", data={"csrf_token": csrf_of(page)})
    assert taken.status_code == 302
    row = conversation_row(app)
    assert row.handled_by == f"staff:{OPERATOR}" and row.handled_since is not None
    held = page_text(operator.get(taken.headers["Location"]))
    assert re.search(rf"Handled by {OPERATOR} since \d+ \w+ \d{{4}} \d\d:\d\d UTC; automated replies are held\.", held)
    assert "You handle this conversation now" in held and "Take over" not in held
    assert listed(operator, show="mine") == [USER] and f"Handled by {OPERATOR}" in page_text(operator.get("/console/inbox"))

    released = operator.post(f"/console/inbox/{USER}/release", data={"csrf_token": csrf_of(page)})
    assert released.status_code == 302 and "Released" in page_text(operator.get(released.headers["Location"]))
    row = conversation_row(app)
    assert (row.handled_by, row.handled_since) == (None, None)
    assert listed(operator, show="mine") == []


def test_while_one_operator_handles_it_the_others_texts_are_refused(app, operator):
    written(app)
    operator.post(f"/console/inbox/{USER}/take", data={"csrf_token": csrf_of(operator.get(f"/console/inbox/{USER}"))})
    other = signed_in(app, "bo@example.com", Role.OPERATOR)
    page = page_text(other.get(f"/console/inbox/{USER}"))
    assert f"{OPERATOR} handles this conversation: a text from you is refused until you take it over." in page
    assert f"Take over from {OPERATOR}" in page
    refused = reply(other, USER, text="Hi, Bo here")
    assert refused.status_code == 409 and f"Not sent. {OPERATOR} handles this conversation: take it over to reply." in page_text(refused)
    assert "staff:bo@example.com" not in [row.requested_by for row in outbound(app)]
    assert reply(operator, USER, text="Hi, Ana here").status_code == 302  # the one who handles it replies


def test_a_person_who_never_wrote_has_no_conversation_to_take_over(app, operator):
    services_of(app).ledger.append(web_opt_in(THIRD_USER))
    page = operator.get(f"/console/inbox/{THIRD_USER}")
    assert page.status_code == 200 and "They have never written" in page_text(page) and "Take over" not in page_text(page)
    assert operator.post(f"/console/inbox/{THIRD_USER}/take", data={"csrf_token": csrf_of(page)}).status_code == 409
    assert operator.get("/console/inbox/16505550000").status_code == 404
    assert operator.get("/console/inbox/not-a-number").status_code == 404


def test_a_viewer_reads_but_sees_no_reply_box_and_a_forged_post_is_refused(app, viewer):
    written(app, **text("hello?"))
    page = viewer.get(f"/console/inbox/{USER}")
    assert "hello?" in page_text(page) and "Replying needs the operator role." in page_text(page)
    assert "<form" not in page.get_data(as_text=True).split("<main>")[1] and "Handled by me" not in page_text(viewer.get("/console/inbox"))
    assert conversation_row(app).read_at is not None  # any role reading marks it read
    token = csrf_of(page)
    request_id = str(uuid.uuid4())
    assert viewer.post(f"/console/inbox/{USER}/reply", data={"csrf_token": token, "request": request_id, "text": "hi"}).status_code == 403
    assert viewer.post(f"/console/inbox/{USER}/take", data={"csrf_token": token}).status_code == 403
    assert viewer.post(f"/console/inbox/{USER}/release", data={"csrf_token": token}).status_code == 403
    assert conversation_row(app).handled_by is None
    assert [row.requested_by for row in outbound(app)] == ["webhook"]  # the welcome only
