"""What a yes and a START give (R8): a yes is an opt-in only as the answer to the bot's own
opt-in question, whose text is then the consent text; START restores what the person had and
its confirmation says exactly that."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from bot.domain.consent import Action, Channel, Marketing, Scope, State
from bot.domain.policy import MessageKind, Refusal
from bot.domain.replies import Reply
from bot.services import services_of
from bot.storage.outbox import Message, QueueName, Template
from bot.storage.schema import outbound_messages
from tests.conftest import ADMIN_TOKEN
from tests.helpers import USER, opt_out, web_opt_in
from tests.test_identities import send_queued
from tests.test_webhook import button_tap, message_body, payload, post, replies

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SPRING_SALE = Template("spring_sale", "en")


def say(client, text: str, message_id: str, **extra: object) -> None:
    assert post(client, message_body(id=message_id, type="text", text={"body": text}, **extra)).status_code == 200


def ask(client, **extra: object) -> str:
    """Staff ask USER the bot's opt-in question; the id of the stored message."""
    response = client.post("/api/v1/messages", json={"to": USER, "ask": "opt_in", **extra}, headers=AUTH)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def marketing(app, key: str):
    return services_of(app).outbox.submit(
        Message(USER, MessageKind.MARKETING_TEMPLATE, template=SPRING_SALE), key, "staff:test", QueueName.BULK
    )


def send_welcome_first(app) -> None:
    """Send the welcome before the question is asked. Sent together, the two may leave in either
    order (a call thread that wakes late for its slot takes a new one: a busy machine), and a yes
    answers the last message sent."""
    assert [message.kind for message in send_queued(app)] == [MessageKind.FREE_FORM]


def asked(app, client, text: str = "hello") -> str:
    """USER wrote, was welcomed, was asked the question, and it went out: its Meta message id."""
    say(client, text, "wamid.HELLO")
    send_welcome_first(app)
    ask(client)
    [*_, question] = send_queued(app)
    assert question.kind is MessageKind.OPT_IN_QUESTION and question.state.value == "sent"
    return question.meta_message_id


def test_yes_to_the_bots_question_is_an_opt_in_to_the_question_and_lets_offers_through(app, client, graph):
    question_id = asked(app, client)
    question = services_of(app).replies.render(Reply.OPT_IN_QUESTION, "en")
    assert graph.requests[-1].body["text"]["body"] == question  # what the person saw is what the ledger keeps
    assert "Acme Bakery" in question and "offers" in question and "YES" in question
    say(client, "Yes 👍", "wamid.YES")
    state = services_of(app).ledger.state(USER)
    assert (state.state, state.marketing) == (State.OPTED_IN, Marketing.ALLOWED)
    opt_in = state.consent_event
    assert (opt_in.action, opt_in.channel, opt_in.consent_text) == (Action.OPT_IN, Channel.WHATSAPP_ANSWER, question)
    assert opt_in.evidence["message_id"] == "wamid.YES" and opt_in.evidence["question_meta_message_id"] == question_id
    assert replies(app)[-1] == ("start_confirmation", services_of(app).replies.render(Reply.OPT_IN_CONFIRMATION, "en"))
    submission = marketing(app, "sale-1")
    assert submission.queued and services_of(app).outbox.get(submission.message_id).consent_event_id == opt_in.event_id


def test_hello_and_yes_without_the_question_are_no_consent_to_marketing(app, client):
    say(client, "hello", "wamid.HELLO")
    say(client, "Yes", "wamid.YES")
    assert (marketing(app, "sale-1").reason, services_of(app).ledger.state(USER).state) == (Refusal.NO_CONSENT, State.IMPLICIT)


def test_a_yes_quoting_another_message_answers_that_one(app, client):
    asked(app, client)
    with services_of(app).engine.connect() as conn:  # the welcome, sent before the question
        welcome_id = conn.execute(
            sa.select(outbound_messages.c.meta_message_id).where(outbound_messages.c.kind == "free_form")
        ).scalar_one()
    say(client, "yes", "wamid.YES", context={"from": "15550000000", "id": welcome_id})
    assert services_of(app).ledger.state(USER).state is State.IMPLICIT


def test_a_yes_quoting_the_question_answers_it_even_after_another_message(app, client):
    question_id = asked(app, client)
    client.post("/api/v1/messages", json={"to": USER, "text": "Your bread is ready."}, headers=AUTH)
    send_queued(app)
    say(client, "sí", "wamid.YES", context={"from": "15550000000", "id": question_id})
    assert services_of(app).ledger.state(USER).state is State.OPTED_IN


def test_a_yes_after_another_message_answers_that_message(app, client):
    asked(app, client)
    client.post("/api/v1/messages", json={"to": USER, "text": "Is your order ready to collect?"}, headers=AUTH)
    send_queued(app)
    say(client, "yes", "wamid.YES")
    assert services_of(app).ledger.state(USER).state is State.IMPLICIT


def test_a_question_not_yet_sent_is_not_answered(app, client):
    say(client, "hello", "wamid.HELLO")
    ask(client)
    say(client, "yes", "wamid.YES")
    assert services_of(app).ledger.state(USER).state is State.IMPLICIT


def test_a_yes_a_day_later_answers_nothing(app, client):
    asked(app, client)
    with services_of(app).engine.begin() as conn:
        conn.execute(
            outbound_messages.update().where(outbound_messages.c.kind == "opt_in_question")
            .values(sent_at=outbound_messages.c.sent_at - timedelta(hours=25))
        )
    say(client, "yes", "wamid.YES")
    assert services_of(app).ledger.state(USER).state is State.IMPLICIT


@pytest.mark.parametrize("meanwhile", ["STOP", "Stop promotions"])
def test_a_yes_after_saying_no_meanwhile_answers_nothing(app, client, meanwhile):
    """They stopped after the question: an older question cannot turn a later yes into consent."""
    asked(app, client)
    if meanwhile == "STOP":
        say(client, "STOP", "wamid.STOP")
        say(client, "START", "wamid.START")
    else:
        assert post(client, button_tap(meanwhile, "wamid.STOP-PROMOTIONS")).status_code == 200
    say(client, "yes", "wamid.YES")
    state = services_of(app).ledger.state(USER)
    assert state.state is State.IMPLICIT and state.marketing is not Marketing.ALLOWED
    assert Channel.WHATSAPP_ANSWER not in {event.channel for event in services_of(app).ledger.history(USER)}


@pytest.mark.parametrize(
    ("before", "reason"),
    [("nothing", "no_consent"), ("stop", "opted_out"), ("stop_marketing", "marketing_opted_out")],
)
def test_the_question_is_never_asked_of_someone_who_said_no_or_never_wrote(app, client, before, reason):
    if before != "nothing":
        say(client, "hello", "wamid.HELLO")
        services_of(app).ledger.append(opt_out(scope=Scope.ALL if before == "stop" else Scope.MARKETING))
    response = client.post("/api/v1/messages", json={"to": USER, "ask": "opt_in"}, headers=AUTH)
    assert response.status_code == 409 and response.get_json()["reason"] == reason


def test_the_question_and_its_confirmation_speak_the_language_asked_in(app, client):
    say(client, "ciao", "wamid.HELLO")
    send_welcome_first(app)
    ask(client, language="it")
    [*_, question] = send_queued(app)
    assert question.content == {"text": services_of(app).replies.render(Reply.OPT_IN_QUESTION, "it"), "language": "it"}
    say(client, "sì", "wamid.YES")  # also Spanish: the question says which
    assert replies(app)[-1][1] == services_of(app).replies.render(Reply.OPT_IN_CONFIRMATION, "it")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": USER, "ask": "offers"}, "ask"),
        ({"to": USER, "ask": "opt_in", "language": "xx"}, "language"),
        ({"to": USER, "text": "hi", "language": "en"}, "language"),
        ({"to": USER, "ask": "opt_in", "text": "Reply YES for offers"}, "body"),
    ],
)
def test_a_malformed_question_request_answers_422_naming_the_field(app, client, body, field):
    response = client.post("/api/v1/messages", json=body, headers=AUTH)
    assert response.status_code == 422 and response.get_json()["detail"].startswith(f"{field}: ")


def test_the_cli_asks_the_question(app, client, runner):
    say(client, "hello", "wamid.HELLO")
    result = runner.invoke(args=["send", "opt-in-question", "--to", USER, "--language", "es"])
    assert result.exit_code == 0 and result.output.startswith("queued message ")
    with services_of(app).engine.connect() as conn:
        content = conn.execute(sa.select(outbound_messages.c.content).where(outbound_messages.c.kind == "opt_in_question")).scalar_one()
    assert json.loads(content)["language"] == "es"


# -- START says what it gave back ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "confirmation", "marketing"),
    [
        ("implicit", Reply.START_CONFIRMATION_NO_OFFERS, Marketing.NONE),
        ("opted_in", Reply.START_CONFIRMATION, Marketing.ALLOWED),
        ("offers_stopped", Reply.START_CONFIRMATION_OFFERS_STOPPED, Marketing.OPTED_OUT),
    ],
)
def test_start_confirmation_says_what_the_person_gets_back(app, client, history, confirmation, marketing):
    if history != "implicit":
        services_of(app).ledger.append(web_opt_in())
    if history == "offers_stopped":
        assert post(client, payload("button_stop_promotions.json")).status_code == 200
    say(client, "STOP", "wamid.STOP")
    say(client, "START", "wamid.START")
    text = replies(app)[-1][1]
    assert text == services_of(app).replies.render(confirmation, "en")
    assert ("offers you agreed to" in text) == (marketing is Marketing.ALLOWED)
    assert services_of(app).ledger.state(USER).marketing is marketing

