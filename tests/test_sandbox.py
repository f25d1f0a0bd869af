"""The sandbox in one process: it answers the send call like Meta, refuses what Meta refuses, and
the webhooks it sends are signed and shaped so that the bot reads them as Meta's."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bot.inbound.events import DeliveryStatus, InboundMessage, MessageType, StatusUpdate, parse
from bot.inbound.webhook import signature_matches
from bot.settings import Settings
from sandbox import create_sandbox, sandbox_of
from sandbox.chats import Chats, Entry
from tests.helpers import USER

SECRET, TOKEN, NUMBER_ID = "sandbox-secret", "sandbox-token", "100000000000001"


class FakeBot:
    """Records the webhooks the sandbox POSTs, answering 200."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                fake.received.append((self.rfile.read(int(self.headers["Content-Length"])), self.headers.get("X-Hub-Signature-256")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def events(self, count: int, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return [event for body, _ in self.received for event in parse(json.loads(body))]


@pytest.fixture
def bot():
    fake = FakeBot()
    yield fake
    fake.server.shutdown()


@pytest.fixture
def sandbox(bot, tmp_path):
    settings = Settings.from_env({
        "WHATSAPP_APP_SECRET": SECRET, "WHATSAPP_TOKEN": TOKEN, "WHATSAPP_PHONE_NUMBER_ID": NUMBER_ID,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}", "BUSINESS_NAME": "Acme Bakery",
    })
    app = create_sandbox(settings, bot.url)
    yield app.test_client()
    sandbox_of(app).deliveries.stop()


def send(client, body: dict, token: str = TOKEN, number_id: str = NUMBER_ID):
    return client.post(f"/v25.0/{number_id}/messages", json=body, headers={"Authorization": f"Bearer {token}"})


def test_the_template_catalog_is_served_a_page_at_a_time(sandbox):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    first = sandbox.get("/v25.0/102290129340398/message_templates", headers=headers).json
    assert [t["name"] for t in first["data"]] == ["order_update", "spring_sale"]
    second = sandbox.get(f"/v25.0/102290129340398/message_templates?after={first['paging']['cursors']['after']}", headers=headers).json
    assert [(t["name"], t["status"]) for t in second["data"]] == [("login_code", "APPROVED"), ("winter_sale", "PAUSED")]
    assert "next" in first["paging"] and "next" not in second["paging"]


TEXT = {"messaging_product": "whatsapp", "to": USER, "type": "text", "text": {"body": "Welcome!"}}


def test_a_send_is_answered_like_meta_then_reported_sent_and_delivered(sandbox, bot):
    answer = send(sandbox, TEXT)
    assert answer.status_code == 200
    wamid = answer.json["messages"][0]["id"]
    assert answer.json["contacts"] == [{"input": USER, "wa_id": USER}]
    statuses = bot.events(2)
    assert [(s.meta_message_id, s.status, s.recipients) for s in statuses] == [
        (wamid, DeliveryStatus.SENT, (USER,)), (wamid, DeliveryStatus.DELIVERED, (USER,)),
    ]
    assert all(signature_matches(SECRET, body, header) for body, header in bot.received)
    (shown,) = sandbox.get(f"/api/chats/{USER}").json["messages"]
    assert (shown["direction"], shown["text"], shown["status"]) == ("out", "Welcome!", "delivered")


@pytest.mark.parametrize(
    "body, token, number_id, status, code",
    [
        (TEXT, "wrong-token", NUMBER_ID, 401, 190),
        (TEXT, TOKEN, "999", 400, 100),
        ({**TEXT, "to": "12"}, TOKEN, NUMBER_ID, 400, 100),
        ({"to": USER, "type": "audio"}, TOKEN, NUMBER_ID, 400, 100),
    ],
)
def test_what_meta_refuses_the_sandbox_refuses_with_metas_error_code(sandbox, body, token, number_id, status, code):
    answer = send(sandbox, body, token, number_id)
    assert answer.status_code == status
    assert answer.json["error"]["code"] == code


def test_a_template_not_in_the_catalog_shows_its_name_and_parameters(sandbox):
    template = {
        "name": "order_ready", "language": {"code": "en"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "#1042"}]}],
    }
    assert send(sandbox, {"to": USER, "type": "template", "template": template}).status_code == 200
    (shown,) = sandbox.get(f"/api/chats/{USER}").json["messages"]
    assert (shown["kind"], shown["text"]) == ("template", "Template order_ready (en)\n#1042")


def test_a_catalog_template_shows_its_text_with_the_parameters_filled_in(sandbox):
    template = {
        "name": "order_update", "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "#1042"}, {"type": "text", "text": "on its way"}]}],
    }
    assert send(sandbox, {"to": USER, "type": "template", "template": template}).status_code == 200
    (shown,) = sandbox.get(f"/api/chats/{USER}").json["messages"]
    assert (shown["kind"], shown["text"]) == ("template", "Your order #1042 is on its way.")


def test_what_a_user_types_or_taps_reaches_the_bot_as_metas_signed_webhook(sandbox, bot):
    assert sandbox.post("/api/chats/+1 650 555 1234/messages", json={"text": "hello"}).status_code == 201
    assert sandbox.post(f"/api/chats/{USER}/messages", json={"button": "Stop promotions"}).status_code == 201
    typed, tapped = bot.events(2)
    assert isinstance(typed, InboundMessage) and (typed.sender, typed.type, typed.text) == (USER, MessageType.TEXT, "hello")
    assert isinstance(tapped, InboundMessage) and (tapped.type, tapped.button_payload) == (MessageType.BUTTON, "Stop promotions")
    assert all(signature_matches(SECRET, body, header) for body, header in bot.received)
    assert sandbox.get("/api/chats").json == {"chats": [USER]}


USERNAME_USER = "US.20571446901837265093"


def test_a_username_user_has_no_phone_in_any_webhook_and_is_answered_by_recipient(sandbox, bot):
    assert sandbox.post(f"/api/chats/{USERNAME_USER}/messages", json={"text": "hi"}).status_code == 201
    bot.events(1)
    (body, _), = bot.received
    value = json.loads(body)["entry"][0]["changes"][0]["value"]
    assert "from" not in value["messages"][0] and value["messages"][0]["from_user_id"] == USERNAME_USER
    assert "wa_id" not in value["contacts"][0] and value["contacts"][0]["profile"]["username"]
    answer = send(sandbox, {"messaging_product": "whatsapp", "recipient": USERNAME_USER, "type": "text", "text": {"body": "Welcome!"}})
    assert answer.status_code == 200 and answer.json["contacts"] == [{"input": USERNAME_USER, "user_id": USERNAME_USER}]
    typed, sent, delivered = bot.events(3)
    assert typed.identifiers == (USERNAME_USER,) and sent.recipients == delivered.recipients == (USERNAME_USER,)
    assert all('"recipient_id"' not in body.decode() for body, _ in bot.received)
    assert [entry["text"] for entry in sandbox.get(f"/api/chats/{USERNAME_USER}").json["messages"]] == ["hi", "Welcome!"]


def test_reading_reports_read_once(sandbox, bot):
    send(sandbox, TEXT)
    bot.events(2)
    assert sandbox.post(f"/api/chats/{USER}/read").json == {"read": 1}
    assert sandbox.post(f"/api/chats/{USER}/read").json == {"read": 0}
    assert isinstance(read := bot.events(3)[-1], StatusUpdate) and read.status is DeliveryStatus.READ


@pytest.mark.parametrize("body", [{}, {"text": "  "}, {"button": 7}])
def test_an_empty_message_or_a_bad_number_is_refused(sandbox, body):
    assert sandbox.post(f"/api/chats/{USER}/messages", json=body).status_code == 422
    assert sandbox.post("/api/chats/0123/messages", json={"text": "hi"}).status_code == 422


def test_statuses_only_move_forward():
    chats = Chats()
    chats.add(Entry("wamid.1", USER, "out", "text", "hi"))
    assert chats.advance("wamid.1", "delivered")
    assert not chats.advance("wamid.1", "sent")
    assert chats.advance("wamid.1", "read")
    assert not chats.advance("wamid.unknown", "read")
