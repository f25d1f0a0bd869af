"""The business's own conversation (SPEC §9): inbound messages kept, forwarded signed to the
business's system in order per person, answered by its handlers, all behind the consent gate.

The app records webhooks in this process; the forwarders run as a worker process runs them
(bot.outbound.worker), against a real local receiver.
"""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonschema_rs
import pytest
import redis
import sqlalchemy as sa

from bot import create_app
from bot.domain.staff import Role
from bot.outbound.forwarder import post_to
from bot.outbound.worker import _forwarders, _start_forwarders, tidy_when_due
from bot.plugins import HandlersNotFound
from bot.services import services_of
from bot.settings import ConfigError
from bot.staff.openapi import openapi_document
from bot.storage.conversations import forget_before
from bot.storage.forwarding import FRONT, Destination, EventType, Feed, ForwardQueue, Pending
from bot.storage.ledger import as_utc
from bot.storage.schema import conversations, forwarded_events, inbound_messages, outbound_messages
from examples.opening_hours import HOURS
from tests.conftest import ADMIN_TOKEN, FakeClock, app_config
from tests.helpers import OTHER_USER, USER, reconfigure
from tests.receiver import SECRET
from tests.test_console_auth import page_text, post_form, sign_in
from tests.test_staff_accounts import add_staff
from tests.test_webhook import message_body, payload, post, sent_message, status_body

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def app(database_url, redis_url, graph, receiver):
    app = create_app(app_config(
        database_url, redis_url, graph, FORWARD_URL=receiver.url, FORWARD_SECRET=SECRET, FORWARD_RETRY_SECONDS=1,
        BOT_HANDLERS="examples.opening_hours",
    ))
    yield app
    services_of(app).dispose()


@pytest.fixture
def forwarders(app):
    """The worker's delivery loops, running in this process until the test ends."""
    stop = threading.Event()
    threads = _start_forwarders(services_of(app), _forwarders(services_of(app)), stop)
    yield
    stop.set()
    for thread in threads:
        thread.join()


def say(client, text: str, sender: str = USER) -> str:
    """A text from `sender`, posted as Meta would; its message id."""
    message_id = f"wamid.{uuid.uuid4().hex}"
    assert post(client, message_body(id=message_id, type="text", text={"body": text}, **{"from": sender})).status_code == 200
    return message_id


def rows(app, table: sa.Table, *where) -> list[sa.RowMapping]:
    with services_of(app).engine.connect() as conn:
        return conn.execute(sa.select(table).where(*where)).mappings().all()


def wait_for_rows(app, table: sa.Table, *where, timeout: float = 10) -> list[sa.RowMapping]:
    deadline = time.monotonic() + timeout
    while not (found := rows(app, table, *where)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_a_question_is_kept_forwarded_signed_and_answered_by_the_handler(app, client, receiver, forwarders):
    message_id = say(client, "Are you open on Sunday? 🙏")

    kept = rows(app, inbound_messages)
    assert [(r["id"], r["sender"], r["type"], r["text"], r["handled_as"]) for r in kept] == [
        (message_id, USER, "text", "Are you open on Sunday? 🙏", None)
    ]
    [event] = receiver.wait_for(1, "message")
    assert receiver.posts[0].signed_right
    uuid.UUID(event["id"])
    assert event["person"] == {"wa_id": USER, "user_id": None}
    assert event["message"] == {"id": message_id, "type": "text", "text": "Are you open on Sunday? 🙏"}
    assert event["consent"]["state"] == "implicit" and event["consent"]["window_open_until"]
    assert event["conversation"] == {"handled_by": None}
    [answer] = wait_for_rows(app, outbound_messages, outbound_messages.c.requested_by == "handler:opening_hours")
    assert (answer["recipient"], json.loads(answer["content"]), answer["state"]) == (USER, {"text": HOURS}, "queued")


def test_stop_is_forwarded_as_a_consent_change_and_nothing_reaches_the_user_after_it(app, client, receiver, forwarders):
    say(client, "hello")
    stop_id = say(client, "STOP")
    after_id = say(client, "are you open tomorrow?")

    receiver.wait_for(2, "message")
    [consent] = receiver.wait_for(1, "consent")
    assert consent["consent"]["action"] == "opt_out" and consent["consent"]["scope"] == "all"
    assert consent["person"]["wa_id"] == USER
    forwarded_ids = [event["message"]["id"] for event in receiver.accepted("message")]
    assert stop_id not in forwarded_ids and after_id in forwarded_ids  # a keyword is a consent change, not a message
    assert [e["consent"]["state"] for e in receiver.accepted("message")] == ["implicit", "opted_out"]
    [refused] = wait_for_rows(app, outbound_messages, outbound_messages.c.requested_by == "handler:opening_hours")
    assert (refused["state"], refused["reason"]) == ("blocked", "opted_out")
    answer = client.post("/api/v1/messages", headers=AUTH, json={"to": USER, "text": "We open at 9."})
    assert (answer.status_code, answer.get_json()["reason"]) == (409, "opted_out")
    template = {"name": "order_update", "language": "en_US", "category": "utility"}
    answer = client.post("/api/v1/messages", headers=AUTH, json={"to": USER, "template": template})
    assert (answer.status_code, answer.get_json()["reason"]) == (409, "opted_out")
    assert [r["handled_as"] for r in rows(app, inbound_messages, inbound_messages.c.id == stop_id)] == ["opt_out"]


def test_statuses_and_consent_changes_from_every_channel_are_forwarded_as_documented(app, client, receiver, forwarders):
    say(client, "hello")
    body, meta_id = status_body("status_delivered.json")
    message_id = sent_message(app, meta_id)  # also records an opt-in from the website
    post(client, body)
    post(client, body)  # Meta delivers it again: it moves nothing, so it is not forwarded again

    sent, delivered = receiver.wait_for(2, "status")
    assert delivered["message"] == {
        "id": message_id, "meta_message_id": meta_id, "status": "delivered", "reason": None, "error_code": None, "campaign_id": None,
    }
    assert sent["message"]["status"] == "sent"  # when Meta took it: the send's answer
    [opt_in] = receiver.wait_for(1, "consent")
    assert (opt_in["consent"]["action"], opt_in["consent"]["channel"], opt_in["person"]["wa_id"]) == ("opt_in", "web", USER)
    time.sleep(0.3)
    assert len(receiver.accepted("status")) == 2
    document = openapi_document()
    for event in receiver.accepted():
        schema = {"$ref": f"#/components/schemas/Forwarded{event['type'].title()}", "components": document["components"]}
        jsonschema_rs.Draft202012Validator(schema).validate(event)


def test_a_receiver_down_for_a_while_then_up_gets_every_event_once_in_order(app, client, receiver, forwarders):
    receiver.answer = 503
    sent = {USER: [], OTHER_USER: []}
    for n in range(4):
        for person in sent:
            sent[person].append(say(client, f"question {n}", sender=person))
    deadline = time.monotonic() + 10
    while len(receiver.posts) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    redis.Redis.from_url(services_of(app).settings.redis_url).flushdb()  # wake-ups and all: delivery state is in the database
    receiver.answer = 200

    receiver.wait_for(8, "message", timeout=30)
    accepted = receiver.accepted("message")
    for person, message_ids in sent.items():
        assert [e["message"]["id"] for e in accepted if e["person"]["wa_id"] == person] == message_ids
    assert len({e["id"] for e in receiver.accepted()}) == len(receiver.accepted())  # each event once
    assert any(p.answered == 503 for p in receiver.posts)
    assert all(p.signed_right for p in receiver.posts)


def test_a_conversation_staff_handle_gets_no_handler_or_system_reply_until_released(app, client, receiver, forwarders):
    say(client, "hello")
    person_id = rows(app, inbound_messages)[0]["person_id"]
    with services_of(app).engine.begin() as conn:
        conn.execute(conversations.update().values(handled_by="staff:ana@example.com"))
    say(client, "what are your opening hours?")

    events = receiver.wait_for(2, "message")
    assert events[-1]["conversation"] == {"handled_by": "staff:ana@example.com"}
    answer = client.post("/api/v1/messages", headers=AUTH, json={"to": USER, "text": "We open at 9."})
    assert (answer.status_code, answer.get_json()["reason"]) == (409, "handled_by_staff")
    assert "staff:ana@example.com handles this conversation" in answer.get_json()["detail"]
    wait_for_rows(app, forwarded_events, forwarded_events.c.destination == "handlers", forwarded_events.c.state == "delivered")
    time.sleep(0.3)
    assert rows(app, outbound_messages, outbound_messages.c.requested_by == "handler:opening_hours") == []

    with services_of(app).engine.begin() as conn:
        conn.execute(conversations.update().where(conversations.c.person_id == person_id).values(handled_by=None))
    say(client, "are you open on sunday?")
    assert wait_for_rows(app, outbound_messages, outbound_messages.c.requested_by == "handler:opening_hours")
    answer = client.post("/api/v1/messages", headers=AUTH, json={"to": USER, "text": "We open at 9."})
    assert answer.status_code == 202


def test_media_reactions_locations_edits_and_revokes_are_kept(app, client):
    post(client, payload("image_message.json"))
    post(client, payload("reaction_message.json"))
    location = {"latitude": 52.37, "longitude": 4.89, "name": "Dam Square"}
    post(client, message_body(id="wamid.LOC", type="location", location=location))
    post(client, message_body(id="wamid.ORIGINAL", type="text", text={"body": "I ordered 2 loaves"}))
    edited = {"type": "text", "text": {"body": "I ordered 3 loaves"}}
    post(client, message_body(id="wamid.EDIT", type="edit", edit={"original_message_id": "wamid.ORIGINAL", "message": edited}))
    post(client, message_body(id="wamid.GONE", type="text", text={"body": "my card number is 4111"}))
    post(client, message_body(id="wamid.REVOKE", type="revoke", revoke={"original_message_id": "wamid.GONE"}))

    kept = {r["id"]: r for r in rows(app, inbound_messages)}
    [image] = [r for r in kept.values() if r["type"] == "image"]
    assert image["text"] == "my receipt"
    assert json.loads(image["content"])["media"]["id"] == "1003383421387256"
    [reaction] = [r for r in kept.values() if r["type"] == "reaction"]
    assert json.loads(reaction["content"])["reaction"]["emoji"] == "👍"
    assert json.loads(kept["wamid.LOC"]["content"])["location"] == location
    assert (kept["wamid.ORIGINAL"]["text"], kept["wamid.ORIGINAL"]["edited_at"] is not None) == ("I ordered 3 loaves", True)
    assert (kept["wamid.GONE"]["text"], kept["wamid.GONE"]["revoked_at"] is not None) == (None, True)
    assert "wamid.EDIT" not in kept and "wamid.REVOKE" not in kept  # applied to the messages they change


def test_messages_past_retention_are_removed_and_the_ledger_keeps_its_evidence(app, client):
    say(client, "hello")
    say(client, "STOP")
    services = services_of(app)
    removed = forget_before(services.engine, services.ledger.clock() + timedelta(seconds=1))
    assert removed == 2 and rows(app, inbound_messages) == []
    assert services.ledger.state(USER).state.value == "opted_out"
    assert services.ledger.verify().ok


def test_an_event_undelivered_for_three_days_is_kept_as_failed_then_retried(database_url, redis_url, graph):
    app = create_app(app_config(database_url, redis_url, graph))
    clock = FakeClock(services_of(app).ledger.clock())
    queue = ForwardQueue(services_of(app).engine, clock, first_retry=timedelta(seconds=10))
    feed = Feed([Destination.URL], clock)
    with services_of(app).engine.begin() as conn:
        feed.write(conn, feed.event(EventType.MESSAGE, "person-1", {"wa_id": USER, "user_id": None}, clock.now, {"message": {}}))
    waits = []
    while True:
        [event] = queue.claim(Destination.URL, 10)
        if not queue.not_delivered(event, "the receiver answered 503"):
            break
        [row] = rows(app, forwarded_events)
        waits.append(as_utc(row["next_attempt_at"]) - clock.now)
        clock.now = as_utc(row["next_attempt_at"])
    assert waits[:4] == [timedelta(seconds=s) for s in (10, 20, 40, 80)] and max(waits) == timedelta(hours=1)
    [summary] = [s for s in queue.summary() if s.destination is Destination.URL]
    assert (summary.pending, summary.failed, summary.last_error) == (0, 1, "the receiver answered 503")

    runner = app.test_cli_runner()
    assert "the receiver answered 503" in runner.invoke(args=["forward", "status"]).output
    assert runner.invoke(args=["forward", "retry"]).output.strip() == "1 failed event(s) pending again"
    assert [e.attempts for e in queue.claim(Destination.URL, 10)] == [1]
    services_of(app).dispose()


def test_odd_messages_are_kept_and_forwarded_without_losing_the_stop_beside_them(app, client):
    body = message_body(id="wamid.NUL", type="text", text={"body": "hi\u0000 there"})
    value = body["entry"][0]["changes"][0]["value"]
    place = {"latitude": 1.5, "longitude": 2.5, "name": "NAME-MARK"}
    value["messages"] += [
        {**value["messages"][0], "id": "wamid.PLACE", "type": "location", "location": place, "text": None},
        {**value["messages"][0], "id": "wamid.BIG", "type": "location", "location": {**place, "address": "x" * 30_000}, "text": None},
        {**value["messages"][0], "id": "wamid.STOP", "type": "text", "text": {"body": "STOP"}},
    ]
    raw = json.dumps(body).replace("NAME-MARK\"", "\\ud800 caf\\u00e9\"", 1).encode()  # a lone surrogate, as JSON may carry
    assert post(client, raw).status_code == 200

    assert services_of(app).ledger.state(USER).state.value == "opted_out"
    kept = {r["id"]: r for r in rows(app, inbound_messages)}
    assert kept["wamid.NUL"]["text"] == "hi\ufffd there"
    assert json.loads(kept["wamid.PLACE"]["content"])["location"]["name"] == "\ud800 caf\u00e9"
    assert kept["wamid.BIG"]["type"] == "location" and "location" not in json.loads(kept["wamid.BIG"]["content"])  # too big to keep
    assert kept["wamid.STOP"]["handled_as"] == "opt_out"
    forwarded = [json.loads(r["body"]) for r in rows(app, forwarded_events, forwarded_events.c.destination == "url")]
    assert sorted(e["message"]["id"] for e in forwarded if e["type"] == "message") == ["wamid.BIG", "wamid.NUL", "wamid.PLACE"]
    assert [e["consent"]["action"] for e in forwarded if e["type"] == "consent"] == ["opt_out"]


def test_the_console_shows_what_is_pending_and_failed_and_an_operator_sends_failures_again(app, client):
    queue = services_of(app).forward_queue
    say(client, "hello")  # one message event for each destination, pending
    clock = FakeClock(services_of(app).ledger.clock())
    [for_url] = ForwardQueue(services_of(app).engine, clock).claim(Destination.URL, 10)
    clock.advance(days=3)
    ForwardQueue(services_of(app).engine, clock).not_delivered(for_url, "the receiver answered 502")
    add_staff(app, "viewer@example.com", Role.VIEWER)
    add_staff(app, "operator@example.com", Role.OPERATOR)

    viewer = app.test_client()
    sign_in(viewer, "viewer@example.com")
    page = viewer.get("/console/health")
    assert "<title>Account health · Staff console" in page.get_data(as_text=True)  # the section is in the page, not its title
    shown = page_text(page)
    assert "FORWARD_URL" in shown and "BOT_HANDLERS examples.opening_hours Pending 1" in shown
    assert "Failed 1" in shown and "the receiver answered 502" in shown and "Deliver failed events again" not in shown
    assert post_form(viewer, "/console/health", "/console/health/forwarding/retry").status_code == 403

    operator = app.test_client()
    sign_in(operator, "operator@example.com")
    answer = post_form(operator, "/console/health", "/console/health/forwarding/retry")
    assert answer.status_code == 302
    assert "1 failed event(s) will be delivered again" in page_text(operator.get(answer.location))
    assert [s.pending for s in queue.summary()] == [1, 1]


def test_one_person_waiting_for_a_retry_never_holds_up_everyone_behind_them(database_url, redis_url, graph):
    app = create_app(app_config(database_url, redis_url, graph))
    clock = FakeClock(services_of(app).ledger.clock())
    queue = ForwardQueue(services_of(app).engine, clock)
    feed = Feed([Destination.URL], clock)
    stuck = [feed.event(EventType.MESSAGE, "stuck", {"wa_id": USER, "user_id": None}, clock.now, {"n": n})[0] for n in range(FRONT + 1)]
    with services_of(app).engine.begin() as conn:
        feed.write(conn, stuck)
        feed.write(conn, feed.event(EventType.MESSAGE, "behind", {"wa_id": OTHER_USER, "user_id": None}, clock.now, {"n": 0}))
    [head] = queue.claim(Destination.URL, 1)
    assert head.person_id == "stuck"
    queue.not_delivered(head, "the receiver answered 400")  # its retry is 10 s away; 5,000 more of theirs wait behind it

    assert [event.person_id for event in queue.claim(Destination.URL, 10)] == ["behind"]
    services_of(app).dispose()


def test_a_receiver_that_cannot_be_reached_is_tried_again_and_the_reason_keeps_its_url_secret(app, client):
    reconfigure(app, forward_url="http://127.0.0.1:1/events?token=hush", forward_secret=SECRET)
    stop = threading.Event()
    threads = _start_forwarders(services_of(app), _forwarders(services_of(app)), stop)
    say(client, "anyone there?")
    try:
        [event] = wait_for_rows(app, forwarded_events, forwarded_events.c.destination == "url", forwarded_events.c.last_error.is_not(None))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert (event["state"], event["last_error"]) == ("pending", "the receiver could not be reached (ConnectionRefusedError)")


def test_a_handler_that_raises_fails_once_and_the_others_go_on(database_url, redis_url, graph, receiver):
    app = create_app(app_config(
        database_url, redis_url, graph, FORWARD_URL=receiver.url, FORWARD_SECRET=SECRET, BOT_HANDLERS="tests.failing_handlers",
    ))
    stop = threading.Event()
    threads = _start_forwarders(services_of(app), _forwarders(services_of(app)), stop)
    client = app.test_client()
    try:
        say(client, "what is the price of rye bread?")
        post(client, payload("image_message.json"))
        [thanks] = wait_for_rows(app, outbound_messages, outbound_messages.c.requested_by == "handler:thank_for_photo")
        [failed] = wait_for_rows(app, forwarded_events, forwarded_events.c.state == "failed")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert json.loads(thanks["content"]) == {"text": "Thanks for the photo!"}
    assert (failed["destination"], failed["attempts"]) == ("handlers", 1)
    assert failed["last_error"] == "handler quote_price raised ValueError: no price list loaded"
    assert "handler quote_price raised ValueError" in app.test_cli_runner().invoke(args=["forward", "status"]).output
    services_of(app).dispose()


def test_bot_handlers_naming_no_handlers_stops_the_worker_with_one_line(database_url, redis_url, graph):
    for module, reason in (("tests.no_such_module", "cannot be imported (ModuleNotFoundError"), ("tests.helpers", "has no `handlers")):
        app = create_app(app_config(database_url, redis_url, graph, BOT_HANDLERS=module))
        with pytest.raises(HandlersNotFound, match=re.escape(reason)):
            _forwarders(services_of(app))
        services_of(app).dispose()
    with pytest.raises(ConfigError, match="FORWARD_SECRET must be too"):
        create_app(app_config(database_url, redis_url, graph, FORWARD_URL="https://crm.example.com/whatsapp"))


def test_a_message_meta_delivers_again_is_forwarded_once(app, client, receiver, forwarders):
    body = message_body(id="wamid.TWICE", type="text", text={"body": "do you deliver to Leiden?"})
    for _ in range(3):
        assert post(client, body).status_code == 200

    receiver.wait_for(1, "message")
    time.sleep(0.5)
    assert [e["message"]["id"] for e in receiver.accepted("message")] == ["wamid.TWICE"]
    assert len(rows(app, forwarded_events, forwarded_events.c.destination == "handlers")) == 1
    assert len(rows(app, inbound_messages)) == 1


def test_the_sweeper_removes_old_messages_and_delivered_events_once_an_hour_across_workers(app, client):
    say(client, "hello")
    services = services_of(app)
    with services.engine.begin() as conn:
        conn.execute(inbound_messages.update().values(received_at=services.ledger.clock() - timedelta(days=91)))
        conn.execute(forwarded_events.update().values(state="delivered", finished_at=services.ledger.clock() - timedelta(days=8)))

    assert tidy_when_due(services) == (1, 2)  # the message; its events for FORWARD_URL and the handlers
    assert tidy_when_due(services) is None  # another worker's round, within the hour: nothing
    assert rows(app, inbound_messages) == [] and rows(app, forwarded_events) == []
    assert services.ledger.state(USER).state.value == "implicit"


def test_a_kept_connection_the_receiver_closed_meanwhile_is_replaced_without_a_failure():
    """A receiver that answers as HTTP/1.1 (keep-alive) and then drops the connection, as one
    does after its idle timeout: the next event goes over a new connection, not into a retry."""
    got: list[bytes] = []

    class Closing(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            got.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.close_connection = True  # without saying so: the client finds out on its next request

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Closing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        deliver = post_to(f"http://127.0.0.1:{server.server_port}/events", SECRET)
        events = [
            Pending(n, f"event-{n}", Destination.URL, "person-1", EventType.STATUS, f'{{"n":{n}}}', 1, datetime.now(UTC), None)
            for n in range(3)
        ]
        for event in events:
            time.sleep(0.05)  # the server has closed the last connection by now
            deliver(event)
    finally:
        server.shutdown()
        server.server_close()
    assert got == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
