"""POST /webhook with the sample payloads, signed and tampered: what the ledger records, what
replies are queued, how message states move, and that odd or hostile bodies never give a 500."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.domain.consent import Action, Channel, Marketing, Scope, State
from bot.domain.policy import MessageKind, Refusal
from bot.domain.replies import Reply
from bot.inbound.events import parse
from bot.inbound.handlers import Context
from bot.inbound.handlers.dispatch import record_posts
from bot.outbound.jobs import SendRuntime
from bot.outbound.queues import enqueuer, make_queues
from bot.outbound.worker import sweep
from bot.services import services_of
from bot.storage.db import make_engine
from bot.storage.ledger import Ledger, utc_now
from bot.storage.outbox import Message, MessageState, Outbox, Template
from bot.storage.schema import account_notices, early_statuses, outbound_messages, unread_webhooks
from tests.conftest import APP_SECRET, VERIFY_TOKEN
from tests.helpers import OTHER_USER, USER, reconfigure, web_opt_in

PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"


def payload(name: str) -> dict:
    """A sample body with its timestamps moved to now, so that the 24-hour window is open."""
    now = int(time.time())

    def refresh(node):
        if isinstance(node, dict):
            return {k: (str(now) if k == "timestamp" and isinstance(v, str) else now if k == "timestamp" else refresh(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [refresh(item) for item in node]
        return node

    return refresh(json.loads((PAYLOADS / name).read_text(encoding="utf-8")))


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(client, body: dict | bytes, signature: str | None = None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature or sign(raw)}
    return client.post("/webhook", data=raw, headers=headers)


def replies(app, wa_id: str = USER) -> list[tuple[str, str]]:
    """(kind, text) of the messages queued for a user, oldest first."""
    with services_of(app).ledger.engine.connect() as conn:
        rows = conn.execute(
            sa.select(outbound_messages.c.kind, outbound_messages.c.content, outbound_messages.c.state)
            .where(outbound_messages.c.recipient == wa_id)
            .order_by(outbound_messages.c.created_at)
        ).all()
    return [(kind, json.loads(content).get("text")) for kind, content, state in rows if state == "queued"]


def blocked(app) -> list[tuple[str, str]]:
    """(kind, reason) of the messages refused when they were queued."""
    with services_of(app).ledger.engine.connect() as conn:
        query = sa.select(outbound_messages.c.kind, outbound_messages.c.reason).where(outbound_messages.c.state == "blocked")
        return [tuple(row) for row in conn.execute(query)]


def actions(app, wa_id: str = USER) -> list[tuple[Action, Scope, Channel]]:
    return [(e.action, e.scope, e.channel) for e in services_of(app).ledger.history(wa_id)]


def unread(app) -> list[str]:
    with services_of(app).ledger.engine.connect() as conn:
        return list(conn.execute(sa.select(unread_webhooks.c.reason)).scalars())


# -- handshake and signatures -----------------------------------------------------------


def test_handshake_answers_the_challenge_only_with_the_token(client):
    ok = client.get(f"/webhook?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444")
    assert (ok.status_code, ok.mimetype, ok.get_data(as_text=True)) == (200, "text/plain", "1158201444")
    wrong = client.get("/webhook?hub.mode=subscribe&hub.verify_token=guess&hub.challenge=1")
    assert wrong.status_code == 403 and wrong.get_json()["error"] == "forbidden"


def test_handshake_is_refused_when_no_token_is_configured(app, client):
    reconfigure(app, whatsapp_verify_token=None)
    response = client.get("/webhook?hub.mode=subscribe&hub.verify_token=&hub.challenge=1")
    assert response.status_code == 403 and "WHATSAPP_VERIFY_TOKEN" in response.get_json()["detail"]


@pytest.mark.parametrize(
    "signature",
    [None, "", "sha256=", "sha1=abc", sign(b"other body"), sign(b"x", secret="wrong-secret")],
    ids=["missing", "empty", "no-digest", "sha1", "other-body", "wrong-secret"],
)
def test_bad_signatures_are_refused_and_nothing_is_recorded(app, client, signature):
    raw = json.dumps(payload("stop_message.json")).encode()
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    response = client.post("/webhook", data=raw, headers=headers)
    assert response.status_code == 401 and response.get_json()["error"] == "bad_signature"
    assert actions(app) == [] and replies(app) == []


def test_a_tampered_body_is_refused(app, client):
    raw = json.dumps(payload("start_message.json")).encode()
    signature = sign(raw)
    response = post(client, raw.replace(b"start", b"STOP"), signature)
    assert response.status_code == 401 and actions(app) == []


def test_without_an_app_secret_webhooks_fail_closed(app, client):
    reconfigure(app, whatsapp_app_secret=None)
    response = post(client, payload("stop_message.json"))
    assert response.status_code == 503 and "WHATSAPP_APP_SECRET" in response.get_json()["detail"]
    assert actions(app) == []


# -- the conversation -------------------------------------------------------------------


def test_first_message_logs_implicit_consent_and_welcomes_once_with_how_to_stop(app, client):
    assert post(client, payload("text_message.json")).status_code == 200
    assert actions(app) == [
        (Action.IMPLICIT, Scope.ALL, Channel.WHATSAPP_SESSION),
        (Action.OPT_OUT_NOTICE_GIVEN, Scope.ALL, Channel.WHATSAPP_SESSION),
    ]
    [(kind, text)] = replies(app)
    assert kind == "free_form" and "Acme Bakery" in text and "STOP" in text
    assert post(client, payload("text_message.json")).status_code == 200  # redelivered
    second = payload("text_message.json")
    second["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = "wamid.second"
    assert post(client, second).status_code == 200
    assert len(replies(app)) == 1 and len(actions(app)) == 2


def test_a_first_message_delivered_after_the_window_closed_leaves_the_welcome_for_the_next(app, client):
    """Meta retries for days: a hello that arrives 30 hours late cannot be answered, and must
    not use up the welcome (R9) that the user's next message, inside the window, gets."""
    late = payload("text_message.json")
    late["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = str(int(time.time()) - 30 * 3600)
    assert post(client, late).status_code == 200
    assert replies(app) == [] and blocked(app) == []
    again = payload("text_message.json")
    again["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = "wamid.hello-again"
    assert post(client, again).status_code == 200
    [(kind, text)] = replies(app)
    assert kind == "free_form" and text.startswith("Welcome to Acme Bakery!")


def test_stop_opts_out_with_one_confirmation_even_when_redelivered(app, client):
    for _ in range(3):
        assert post(client, payload("stop_message.json")).status_code == 200
    assert actions(app) == [
        (Action.IMPLICIT, Scope.ALL, Channel.WHATSAPP_SESSION),
        (Action.OPT_OUT, Scope.ALL, Channel.WHATSAPP_KEYWORD),
    ]
    assert services_of(app).ledger.state(USER).state is State.OPTED_OUT
    [(kind, text)] = replies(app)
    assert kind == "stop_confirmation" and "START" in text and "Acme Bakery" in text


def test_each_acknowledged_opt_out_leaves_a_new_mark_for_the_send_threads(app, client):
    """A send thread reads its user's mark right before its call (bot.outbound.opt_out_marks)."""
    marks = services_of(app).opt_out_marks

    def mark() -> object:
        opt_out, no_campaign = marks.read_one(USER, None)
        assert no_campaign is None
        return opt_out

    assert post(client, payload("text_message.json")).status_code == 200
    assert mark() is None  # no opt-out, no mark
    assert post(client, payload("stop_message.json")).status_code == 200
    after_stop = mark()
    assert after_stop is not None
    assert post(client, payload("start_message.json")).status_code == 200
    assert mark() == after_stop  # an opt-in asks for no second look
    assert post(client, payload("user_preferences_stop.json")).status_code == 200
    assert mark() not in (None, after_stop)  # a marketing opt-out does


def test_an_opted_out_user_writing_again_gets_one_reminder_per_session(app, client):
    post(client, payload("stop_message.json"))
    for n in range(3):
        again = payload("text_message.json")
        again["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = f"wamid.again-{n}"
        assert post(client, again).status_code == 200
    kinds = [kind for kind, _ in replies(app)]
    assert kinds == ["stop_confirmation", "reply"]
    assert "START" in replies(app)[1][1]
    assert services_of(app).ledger.state(USER).state is State.OPTED_OUT  # writing is not START (R10)


def test_start_after_stop_opts_in_again_with_a_confirmation(app, client):
    post(client, payload("stop_message.json"))
    assert post(client, payload("start_message.json")).status_code == 200
    history = services_of(app).ledger.history(USER)
    start = history[-2]
    assert (start.action, start.channel, start.consent_text) == (Action.OPT_IN, Channel.WHATSAPP_KEYWORD, "start")
    assert history[-1].action is Action.OPT_OUT_NOTICE_GIVEN
    assert services_of(app).ledger.state(USER).state is State.IMPLICIT  # what they had before the STOP (R8)
    assert [kind for kind, _ in replies(app)] == ["stop_confirmation", "start_confirmation"]


def test_a_start_confirmation_still_queued_when_the_user_stops_again_is_not_sent(app, client, graph):
    """It would tell them they are subscribed; after the STOP only its own confirmation goes (R10)."""
    post(client, payload("start_message.json"))
    again = payload("stop_message.json")
    again["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = "wamid.STOP-again"
    assert post(client, again).status_code == 200
    runtime = SendRuntime(services_of(app))
    with services_of(app).ledger.engine.connect() as conn:
        queued = list(conn.execute(sa.select(outbound_messages.c.id).order_by(outbound_messages.c.created_at)).scalars())
    runtime.dispatch(queued)
    runtime.shutdown()
    outbox = services_of(app).outbox
    assert [(m.kind.value, m.state.value, m.reason) for m in map(outbox.get, queued)] == [
        ("start_confirmation", "blocked", "opted_out"), ("stop_confirmation", "sent", None),
    ]
    [sent] = graph.requests
    assert sent.to == USER and sent.body["text"]["body"].startswith("You are unsubscribed from Acme Bakery")


def test_help_is_answered_in_the_keywords_language(app, client):
    assert post(client, payload("help_message_spanish.json")).status_code == 200
    wa_id = payload("help_message_spanish.json")["entry"][0]["changes"][0]["value"]["messages"][0]["from"]
    [(kind, text)] = replies(app, wa_id)
    assert kind == "help_answer" and "PARAR" in text and "Acme Bakery" in text
    assert services_of(app).ledger.state(wa_id).notice_event is not None


def test_a_possible_opt_out_is_recorded_for_review_and_answered(app, client):
    body = payload("possible_opt_out.json")  # its "stop sending me these ads" is a marketing opt-out now (SPEC §3)
    body["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "why do you keep messaging me?"
    assert post(client, body).status_code == 200
    assert (Action.POSSIBLE_OPT_OUT, Scope.ALL, Channel.WHATSAPP_KEYWORD) in actions(app, OTHER_USER)
    assert services_of(app).ledger.state(OTHER_USER).state is State.IMPLICIT  # it does not act
    [(kind, text)] = replies(app, OTHER_USER)
    assert "STOP" in text


def test_an_opted_out_user_who_writes_a_stop_sentence_gets_the_reminder_not_the_question(app, client):
    """Asking "do you want to stop?" of someone who has stopped would be wrong, and would count as a new notice."""
    assert post(client, payload("stop_message.json")).status_code == 200
    sentence = payload("text_message.json")
    sentence["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "why do you keep messaging me?"
    assert post(client, sentence).status_code == 200
    assert [kind for kind, _ in replies(app)] == ["stop_confirmation", "reply"]
    assert replies(app)[1][1].startswith("You are unsubscribed from Acme Bakery")
    assert [a for a, _, _ in actions(app)] == [Action.IMPLICIT, Action.OPT_OUT]  # no possible opt-out, no new notice


def test_stop_promotions_button_stops_marketing_only(app, client):
    services_of(app).ledger.append(web_opt_in())
    assert post(client, payload("button_stop_promotions.json")).status_code == 200
    state = services_of(app).ledger.state(USER)
    assert (state.state, state.marketing) == (State.OPTED_IN, Marketing.OPTED_OUT)
    assert (Action.OPT_OUT, Scope.MARKETING, Channel.WHATSAPP_BUTTON) in actions(app)
    [(kind, text)] = replies(app)
    assert kind == "reply" and "no more offers" in text and "Acme Bakery" in text and "STOP" in text


def button_tap(text: str, message_id: str) -> dict:
    """The "Stop promotions" sample, with another button's text and a message id of its own."""
    body = payload("button_stop_promotions.json")
    message = body["entry"][0]["changes"][0]["value"]["messages"][0]
    message["button"] = {"payload": text, "text": text}
    message["id"] = message_id
    return body


def test_resume_promotions_button_brings_offers_back_and_says_so(app, client):
    services_of(app).ledger.append(web_opt_in())
    assert post(client, payload("button_stop_promotions.json")).status_code == 200
    assert post(client, button_tap("Resume promotions", "wamid.RESUME")).status_code == 200
    state = services_of(app).ledger.state(USER)
    assert (state.state, state.marketing) == (State.OPTED_IN, Marketing.ALLOWED)
    assert (Action.OPT_IN, Scope.MARKETING, Channel.WHATSAPP_BUTTON) in actions(app)
    assert replies(app)[-1] == (
        "start_confirmation", "You will get offers from Acme Bakery on WhatsApp again. Reply STOP at any time to stop all messages.",
    )


@pytest.mark.parametrize(("opt_in_first", "answer"), [(False, "help_answer"), (True, "reply")])
def test_resume_promotions_promises_offers_only_to_users_opted_in_to_messages(app, client, opt_in_first, answer):
    """Implicit consent never covers marketing; after STOP, a tap resumes nothing: START does."""
    if opt_in_first:
        services_of(app).ledger.append(web_opt_in())
        assert post(client, payload("stop_message.json")).status_code == 200
    assert post(client, button_tap("Reanudar promociones", "wamid.RESUME-es")).status_code == 200
    kind, text = replies(app)[-1]
    assert kind == answer and "ofertas" not in text and "Acme Bakery" in text
    assert services_of(app).ledger.state(USER).marketing is not Marketing.ALLOWED


def test_unsubscribe_button_opts_out_of_everything(app, client):
    assert post(client, payload("interactive_button_reply.json")).status_code == 200
    assert services_of(app).ledger.state(USER).state is State.OPTED_OUT
    assert [kind for kind, _ in replies(app)] == ["stop_confirmation"]


def test_marketing_preferences_stop_and_resume(app, client):
    services_of(app).ledger.append(web_opt_in())
    assert post(client, payload("user_preferences_stop.json")).status_code == 200
    assert services_of(app).ledger.state(USER).marketing is Marketing.OPTED_OUT
    assert post(client, payload("user_preferences_resume.json")).status_code == 200
    assert services_of(app).ledger.state(USER).marketing is Marketing.ALLOWED
    assert [a for a in actions(app) if a[2] is Channel.WHATSAPP_PREFERENCES] == [
        (Action.OPT_OUT, Scope.MARKETING, Channel.WHATSAPP_PREFERENCES),
        (Action.OPT_IN, Scope.MARKETING, Channel.WHATSAPP_PREFERENCES),
    ]


def test_the_batch_yields_every_event(app, client):
    assert post(client, payload("batch_mixed.json")).status_code == 200
    ledger = services_of(app).ledger
    assert ledger.state(USER).state is State.IMPLICIT
    assert ledger.state(OTHER_USER).state is State.OPTED_OUT
    assert ledger.state("919812345678").state is State.OPTED_OUT  # रोकें, in Hindi
    [(kind, text)] = replies(app, "919812345678")
    assert kind == "stop_confirmation" and "शुरू" in text


def test_two_messages_from_a_new_user_in_one_post_open_one_session_with_one_welcome(app, client):
    body = payload("text_message.json")
    messages = body["entry"][0]["changes"][0]["value"]["messages"]
    messages.append({**messages[0], "id": "wamid.second"})
    assert post(client, body).status_code == 200
    assert [a for a, _, _ in actions(app)] == [Action.IMPLICIT, Action.OPT_OUT_NOTICE_GIVEN]
    assert [kind for kind, _ in replies(app)] == ["free_form"]


def test_an_item_the_ledger_refuses_is_kept_and_the_rest_of_the_post_recorded(app, client):
    body = payload("batch_mixed.json")
    body["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = "wamid." + "x" * 249  # too long for a source_ref
    assert post(client, body).status_code == 200
    assert [reason for reason in unread(app) if "refused by the ledger" in reason] != []
    assert actions(app, USER) == []
    assert services_of(app).ledger.state(OTHER_USER).state is State.OPTED_OUT
    assert services_of(app).ledger.verify().ok


def parsed(body: dict) -> list:
    return parse(json.loads(json.dumps(body)))


def test_posts_recorded_together_have_their_effects_once(app):
    """Concurrent POSTs share one transaction: a redelivery in the same group doubles nothing."""
    stop, hello = parsed(payload("stop_message.json")), parsed(payload("batch_mixed.json"))
    assert record_posts(services_of(app).handlers, [stop, hello, stop]) == [None, None, None]
    assert [a for a, _, _ in actions(app)] == [Action.IMPLICIT, Action.OPT_OUT]
    assert [kind for kind, _ in replies(app)] == ["stop_confirmation", "reply"]  # the batch's hello came after the STOP
    assert services_of(app).ledger.state(OTHER_USER).state is State.OPTED_OUT
    assert services_of(app).ledger.verify().ok


def test_a_post_that_fails_on_its_own_does_not_fail_the_posts_recorded_with_it(app, monkeypatch):
    def broken(*_):
        raise RuntimeError("a bug in the preferences handler")

    monkeypatch.setattr("bot.inbound.handlers.dispatch.on_preference", broken)
    stop, preferences = parsed(payload("stop_message.json")), parsed(payload("user_preferences_stop.json"))
    hello = parsed(payload("batch_mixed.json"))
    outcomes = record_posts(services_of(app).handlers, [stop, preferences, hello])
    assert outcomes[0] is None and isinstance(outcomes[1], RuntimeError) and outcomes[2] is None
    assert services_of(app).ledger.state(USER).state is State.OPTED_OUT
    assert services_of(app).ledger.state(OTHER_USER).state is State.OPTED_OUT


# -- statuses ---------------------------------------------------------------------------


def sent_message(app, meta_id: str) -> str:
    services_of(app).ledger.append(web_opt_in())
    outbox = services_of(app).outbox
    message_id = outbox.submit(Message(USER, MessageKind.MARKETING_TEMPLATE, template=Template("sale", "en")), "s-1", "staff").message_id
    outbox.mark_sent(message_id, meta_id, None)
    return message_id


def status_body(name: str) -> tuple[dict, str]:
    body = payload(name)
    return body, body["entry"][0]["changes"][0]["value"]["statuses"][0]["id"]


def test_statuses_move_a_message_forward_only(app, client):
    body, meta_id = status_body("status_read.json")
    message_id = sent_message(app, meta_id)
    outbox = services_of(app).outbox
    for name, expected in [("status_delivered.json", "delivered"), ("status_read.json", "read"), ("status_delivered.json", "read"), ("status_sent.json", "read")]:
        late, _ = status_body(name)
        late["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = meta_id
        assert post(client, late).status_code == 200
        assert outbox.get(message_id).state.value == expected


def test_statuses_of_one_message_in_one_post_apply_in_order_of_progress(app, client):
    """Meta may batch a message's statuses in any order: read wins, and a failure after read changes nothing."""
    body, meta_id = status_body("status_read.json")
    message_id = sent_message(app, meta_id)

    def status(name: str, meta_message_id: str) -> dict:
        [found] = status_body(name)[0]["entry"][0]["changes"][0]["value"]["statuses"]
        return {**found, "id": meta_message_id}

    body["entry"][0]["changes"][0]["value"]["statuses"] = [
        status("status_failed_131026.json", meta_id), status("status_read.json", meta_id),
        status("status_delivered.json", meta_id), status("status_sent.json", meta_id),
        status("status_failed_131026.json", "wamid.not-sent-yet"),
    ]
    assert post(client, body).status_code == 200
    message = services_of(app).outbox.get(message_id)
    assert message.state.value == "read" and message.error_code is None
    with services_of(app).ledger.engine.connect() as conn:
        kept = conn.execute(sa.select(early_statuses.c.meta_message_id, early_statuses.c.status)).all()
    assert kept == [("wamid.not-sent-yet", "failed")]


def test_a_131050_failure_records_a_marketing_opt_out(app, client):
    body, meta_id = status_body("status_failed_131050.json")
    message_id = sent_message(app, meta_id)
    assert post(client, body).status_code == 200
    stored = services_of(app).outbox.get(message_id)
    assert (stored.state, stored.error_code) == (MessageState.FAILED, 131050)
    assert services_of(app).ledger.state(USER).marketing is Marketing.OPTED_OUT
    assert (Action.OPT_OUT, Scope.MARKETING, Channel.WHATSAPP_DELIVERY) in actions(app)


# -- odd, hostile and failing ------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps(payload("unsupported_message.json")).encode(),
        b"not json at all",
        b"\xff\xfe invalid utf-8",
        b"[" * 50_000 + b"]" * 50_000,
        json.dumps({"object": "page", "entry": []}).encode(),
        json.dumps({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {"messages": [{"from": "nope"}]}}]}]}).encode(),
        json.dumps({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {"messaging_product": "whatsapp"}}]}]}).encode(),
        json.dumps({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "user_preferences", "value": {"user_preferences": []}}]}]}).encode(),
    ],
    ids=["unsupported-type", "not-json", "invalid-utf8", "deeply-nested", "other-object", "broken-message", "empty-messages", "empty-preferences"],
)
def test_signed_bodies_we_cannot_read_are_kept_and_acknowledged(app, client, raw):
    response = post(client, raw)
    assert response.status_code == 200
    if b"unsupported" not in raw:
        assert unread(app) != []


def unread_items(app) -> list[tuple[str, object]]:
    with services_of(app).ledger.engine.connect() as conn:
        return [(reason, json.loads(raw)) for reason, raw in conn.execute(sa.select(unread_webhooks.c.reason, unread_webhooks.c.raw))]


def test_errors_meta_reports_for_a_whole_batch_are_kept_with_their_codes(app, client):
    body = payload("messages_errors.json")
    assert post(client, body).status_code == 200
    assert unread_items(app) == [("Meta reported errors for the batch (codes: 131000)", body["entry"][0]["changes"][0])]


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"value": "pause"}, "user preference 'marketing_messages' = 'pause' is not handled"),
        ({"category": "utility_messages"}, "user preference 'utility_messages' = 'stop' is not handled"),
    ],
)
def test_a_user_preference_we_do_not_handle_is_kept_and_records_nothing(app, client, change, reason):
    body = payload("user_preferences_stop.json")
    [item] = body["entry"][0]["changes"][0]["value"]["user_preferences"]
    item.update(change)
    assert post(client, body).status_code == 200
    assert unread_items(app) == [(reason, item)] and actions(app) == []


def test_an_oversized_body_is_refused_with_413(client):
    raw = b"{" + b" " * (5 * 1024 * 1024) + b"}"
    response = post(client, raw)
    assert response.status_code == 413 and response.get_json()["error"] == "request_entity_too_large"


def test_redis_down_answers_503_and_the_retry_completes_once(app, client):
    outbox = services_of(app).outbox
    working = outbox.enqueue
    outbox.enqueue = enqueuer(make_queues(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=None)))
    response = post(client, payload("stop_message.json"))
    assert response.status_code == 503 and response.get_json()["error"] == "unavailable"
    assert services_of(app).ledger.state(USER).state is State.OPTED_OUT  # recorded before the failure
    outbox.enqueue = working
    assert post(client, payload("stop_message.json")).status_code == 200
    assert len(actions(app)) == 2 and [kind for kind, _ in replies(app)] == ["stop_confirmation"]
    # The confirmation never reached the queue; the workers' sweeper finds it stale and queues it.
    connection = services_of(app).redis
    later = Outbox(outbox.engine, outbox.ledger, working, lease=outbox.lease, clock=lambda: utc_now() + timedelta(minutes=1))
    assert sweep(later, make_queues(connection), connection, every=5) == 1
    assert connection.llen("rq:queue:replies") == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["object", "entry", "changes", "field", "value", "messages", "statuses", "from", "id", "type", "text", "body", "timestamp", "wa_id", "status", "errors", "code", "x"]),
        children, max_size=5),
    max_leaves=25,
))
def test_fuzzed_signed_bodies_never_give_a_500(client, body):
    if isinstance(body, dict) and "object" in body:
        body["object"] = "whatsapp_business_account"
    response = post(client, json.dumps(body).encode())
    assert response.status_code in (200, 503), response.get_data(as_text=True)


def test_database_unreachable_answers_503_and_the_retry_completes_once(app, client):
    working = services_of(app).handlers
    down = make_engine("postgresql://postgres@127.0.0.1:1/test")
    down_ledger = Ledger(down, key=working.ledger.key)
    services_of(app).handlers = Context(
        down_ledger, Outbox(down, down_ledger, working.outbox.enqueue), working.keywords, working.replies, working.campaigns,
        working.web_opt_ins,
    )
    response = post(client, payload("stop_message.json"))
    assert response.status_code == 503 and "Traceback" not in response.get_data(as_text=True)
    services_of(app).handlers = working
    assert actions(app) == []
    assert post(client, payload("stop_message.json")).status_code == 200
    assert [a for a, _, _ in actions(app)] == [Action.IMPLICIT, Action.OPT_OUT]
    assert [kind for kind, _ in replies(app)] == ["stop_confirmation"]


def test_a_status_arriving_before_its_send_is_recorded_is_applied_later(app, client):
    body, meta_id = status_body("status_delivered.json")
    assert post(client, body).status_code == 200  # Meta was quicker than our bookkeeping
    message_id = sent_message(app, meta_id)
    outbox = services_of(app).outbox
    assert outbox.get(message_id).state is MessageState.SENT
    assert outbox.apply_early_statuses() == 1
    assert outbox.get(message_id).state is MessageState.DELIVERED
    assert outbox.apply_early_statuses() == 0


WEBHOOK_BODIES = sorted(p.name for p in PAYLOADS.glob("*.json") if not p.name.startswith("graph_"))


@pytest.mark.parametrize("name", WEBHOOK_BODIES)
def test_every_sample_body_is_accepted_signed_and_refused_tampered(app, client, name):
    raw = json.dumps(payload(name)).encode()
    tampered = post(client, raw + b" ", sign(raw))
    assert tampered.status_code == 401 and unread(app) == []
    assert services_of(app).ledger.verify().checked == 0  # nothing recorded, for anyone
    response = post(client, raw)
    assert response.status_code == 200 and response.get_json()["events"] >= 1


@pytest.mark.parametrize("name", ["account_update_violation.json", "phone_number_quality_update.json", "template_status_paused.json"])
def test_account_notices_are_kept_for_staff(app, client, name):
    assert post(client, payload(name)).status_code == 200
    with services_of(app).ledger.engine.connect() as conn:
        [(field, event)] = conn.execute(sa.select(account_notices.c.field, account_notices.c.event)).all()
    assert (field, event) == (payload(name)["entry"][0]["changes"][0]["field"], payload(name)["entry"][0]["changes"][0]["value"]["event"])


# -- Meta's message kinds, read for what they are ---------------------------------------------


def message_body(**message: object) -> dict:
    """A messages notification carrying one message from USER, sent now."""
    body = payload("text_message.json")
    body["entry"][0]["changes"][0]["value"]["messages"] = [{"from": USER, "timestamp": str(int(time.time())), **message}]
    return body


SYSTEM_NUMBER_CHANGE = {
    "id": "wamid.SYSTEM1", "type": "system",
    "system": {"body": "User A changed from 16505551234 to 16505550000", "wa_id": "16505550000", "type": "user_changed_number"},
}


def test_a_system_message_is_not_the_user_writing(app, client):
    body = message_body(**SYSTEM_NUMBER_CHANGE)
    assert post(client, body).status_code == 200
    assert actions(app) == [] and replies(app) == []  # no session, no implicit consent, no welcome
    assert actions(app, "16505550000") == [] and replies(app, "16505550000") == [] and unread(app) == []
    assert services_of(app).ledger.state("16505550000").state is State.NONE
    other = message_body(id="wamid.SYSTEM2", type="system", system={"body": "security code changed", "type": "customer_identity_changed"})
    assert post(client, other).status_code == 200 and post(client, other).status_code == 200
    assert unread(app) == ["system message 'customer_identity_changed' kept for staff; the bot does not act on it"]


def test_a_reaction_opens_a_session_but_does_not_use_up_the_welcome(app, client):
    post(client, message_body(id="wamid.REACT1", type="reaction", reaction={"message_id": "wamid.X", "emoji": "👍"}))
    assert actions(app) == [(Action.IMPLICIT, Scope.ALL, Channel.WHATSAPP_SESSION)] and replies(app) == []
    post(client, message_body(id="wamid.HELLO1", type="text", text={"body": "hello"}))
    assert [kind for kind, _ in replies(app)] == ["free_form"]  # the welcome, on the first words


def test_a_revoke_changes_nothing(app, client):
    post(client, message_body(id="wamid.REVOKE1", type="revoke", revoke={"original_message_id": "wamid.X"}))
    assert actions(app) == [] and replies(app) == [] and unread(app) == []


@pytest.mark.parametrize(
    "edited, opted_out",
    [({"type": "text", "text": {"body": "STOP"}}, True), ({"type": "image", "image": {"caption": "stop", "id": "1"}}, True),
     ({"type": "text", "text": {"body": "see you soon"}}, False)],
)
def test_an_edited_message_is_read_for_keywords_in_its_new_content(app, client, edited, opted_out):
    post(client, message_body(id="wamid.EDIT1", type="edit", edit={"original_message_id": "wamid.X", "message": edited}))
    assert (Action.OPT_OUT, Scope.ALL, Channel.WHATSAPP_KEYWORD) in actions(app) or not opted_out
    assert services_of(app).ledger.state(USER).state is (State.OPTED_OUT if opted_out else State.IMPLICIT)


# -- nothing odd in a POST hides the STOP beside it --------------------------------------------


def batch(*messages: dict, statuses: tuple[dict, ...] = ()) -> dict:
    body = payload("text_message.json")
    value = body["entry"][0]["changes"][0]["value"]
    value["messages"] = [{"timestamp": str(int(time.time())), **m} for m in messages]
    if statuses:
        value["statuses"] = list(statuses)
    return body


STOP_FROM_OTHER = {"from": OTHER_USER, "id": "wamid.STOP-BESIDE", "type": "text", "text": {"body": "STOP"}}


def assert_stop_beside_is_recorded_and_item_kept(app, client, body, reason):
    for _ in range(2):  # and again, as Meta redelivers
        response = post(client, body)
        assert response.status_code == 200, response.get_json()
        assert services_of(app).ledger.state(OTHER_USER).state is State.OPTED_OUT
        assert [r for r in unread(app)] == [reason]


def test_a_message_id_another_sender_used_is_kept_and_the_rest_recorded(app, client):
    assert post(client, batch({"from": USER, "id": "wamid.SAME", "type": "text", "text": {"body": "hello"}})).status_code == 200
    reused = {"from": "447700900999", "id": "wamid.SAME", "type": "text", "text": {"body": "hello"}}
    assert_stop_beside_is_recorded_and_item_kept(
        app, client, batch(reused, STOP_FROM_OTHER),
        "refused by the database: SourceRefConflict: source_ref 'implicit:wamid.SAME' was already used for a different event",
    )


def test_a_status_error_code_too_large_for_its_column_is_kept_and_the_rest_recorded(app, client):
    status = {"id": "wamid.UNKNOWN-TO-US", "status": "failed", "timestamp": str(int(time.time())), "recipient_id": USER,
              "errors": [{"code": 10**20, "title": "?"}]}
    body = batch(STOP_FROM_OTHER, statuses=(status,))
    for _ in range(2):
        assert post(client, body).status_code == 200
        assert services_of(app).ledger.state(OTHER_USER).state is State.OPTED_OUT
        [reason] = unread(app)
        assert reason.startswith("refused by the database: ")


def test_a_message_id_too_long_for_its_source_reference_is_kept_and_the_rest_recorded(app, client):
    long_id = {"from": USER, "id": "wamid." + "A" * 244, "type": "text", "text": {"body": "hello"}}  # 250: its reference is longer
    body = batch(long_id, STOP_FROM_OTHER)
    for _ in range(2):
        assert post(client, body).status_code == 200
        assert services_of(app).ledger.state(OTHER_USER).state is State.OPTED_OUT
    assert unread(app) == ["refused by the ledger: source_ref must be 1 to 255 characters"]


def test_an_outage_still_answers_503(app_without_redis):
    response = post(app_without_redis.test_client(), batch(STOP_FROM_OTHER))
    assert response.status_code == 503


# -- keywords mean consent only when they do ----------------------------------------------------


def test_stop_promotions_after_stop_is_told_nothing_is_being_sent(app, client):
    post(client, payload("stop_message.json"))
    assert post(client, payload("button_stop_promotions.json")).status_code == 200
    stopped_everything = services_of(app).replies.render(Reply.UNSUBSCRIBED_REMINDER, "en")
    assert [text for _, text in replies(app)][-1] == stopped_everything
    assert services_of(app).ledger.state(USER).marketing is Marketing.OPTED_OUT  # and it stays out after a START


def test_hello_and_yes_are_no_consent_to_marketing(app, client):
    post(client, message_body(id="wamid.HELLO", type="text", text={"body": "hello"}))
    post(client, message_body(id="wamid.YES", type="text", text={"body": "Yes"}))
    submission = services_of(app).outbox.submit(
        Message(USER, MessageKind.MARKETING_TEMPLATE, template=Template("spring_sale", "en")), "campaign-1", "staff:test"
    )
    assert (submission.queued, submission.reason) == (False, Refusal.NO_CONSENT)
    assert [e.action for e in services_of(app).ledger.history(USER)] == [Action.IMPLICIT, Action.OPT_OUT_NOTICE_GIVEN]


def notice_body(field: str, value: dict) -> dict:
    body = payload("phone_number_quality_update.json")
    body["entry"][0]["changes"][0] = {"field": field, "value": value}
    return body


def kept_notices(app) -> list[tuple[str, str]]:
    with services_of(app).engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.select(account_notices.c.field, account_notices.c.event))]


def test_template_category_and_quality_updates_are_kept_as_notices_once(app, client):
    category = notice_body("template_category_update", {
        "message_template_id": 12345678, "message_template_name": "order_ready", "message_template_language": "en",
        "previous_category": "UTILITY", "new_category": "MARKETING",
    })
    quality = notice_body("message_template_quality_update", {
        "previous_quality_score": "GREEN", "new_quality_score": "YELLOW", "message_template_id": 806312974732579,
        "message_template_name": "order_ready", "message_template_language": "en",
    })
    for _ in range(2):
        assert post(client, category).status_code == 200 and post(client, quality).status_code == 200
    assert kept_notices(app) == [("template_category_update", "MARKETING"), ("message_template_quality_update", "YELLOW")]
    assert unread(app) == []


def test_a_marketing_sign_up_through_metas_link_is_kept_for_staff_not_taken_as_consent(app, client):
    body = payload("user_preferences_stop.json")
    item = body["entry"][0]["changes"][0]["value"]["user_preferences"][0]
    item.update(value="signup", detail="User signed up via signup link", signup_id="13176843987434774")
    assert post(client, body).status_code == 200
    assert kept_notices(app) == [("user_preferences", "signup")]
    assert services_of(app).ledger.history(USER) == []  # no consent the ledger could show


def test_played_moves_a_message_to_read(app, client):
    body, meta_id = status_body("status_read.json")
    message_id = sent_message(app, meta_id)
    body["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] = "played"
    assert post(client, body).status_code == 200
    assert services_of(app).outbox.get(message_id).state is MessageState.READ


def test_a_status_to_a_group_is_applied_by_message_id(app, client):
    body, meta_id = status_body("status_read.json")
    message_id = sent_message(app, meta_id)
    status = body["entry"][0]["changes"][0]["value"]["statuses"][0]
    status.update(recipient_id="fowefinoewcnw", recipient_type="group", recipient_participant_id=USER)
    assert post(client, body).status_code == 200
    assert services_of(app).outbox.get(message_id).state is MessageState.READ and unread(app) == []


def test_a_131050_without_a_usable_recipient_is_kept_for_staff(app, client):
    body, _ = status_body("status_failed_131050.json")
    body["entry"][0]["changes"][0]["value"]["statuses"][0]["recipient_id"] = "CUSTOMER_PHONE_NUMBER"
    assert post(client, body).status_code == 200
    assert unread(app) == ["unreadable status (InvalidNumber)"]


def test_a_clear_opt_out_in_the_users_own_words_is_honoured_like_stop(app, client):
    post(client, message_body(id="wamid.WORDS1", type="text", text={"body": "Please stop messaging me!!"}))
    assert services_of(app).ledger.state(USER).state is State.OPTED_OUT
    assert [kind for kind, _ in replies(app)] == ["stop_confirmation"]


def test_a_request_to_stop_offers_stops_offers_only(app, client):
    post(client, message_body(id="wamid.WORDS2", type="text", text={"body": "stop sending me ads"}))
    state = services_of(app).ledger.state(USER)
    assert (state.state, state.marketing) == (State.IMPLICIT, Marketing.OPTED_OUT)
    said = services_of(app).replies.render(Reply.MARKETING_STOP_CONFIRMATION, "en")
    assert [text for _, text in replies(app)][-1] == said
