"""Forwarding with real worker processes (`python -m bot.outbound.worker`, as the Procfile runs
them) on PostgreSQL and Redis: the business's system down for a while, a Redis flush and a
worker restart meanwhile, and replies that reach the Graph API imitation."""
from __future__ import annotations

import signal
import time

import pytest
import redis

from bot import create_app
from bot.domain.staff import Role
from bot.services import services_of
from examples.opening_hours import HOURS
from tests.conftest import app_config, fresh_postgres_url
from tests.local_services import migrated
from tests.receiver import SECRET
from tests.test_console_auth import sign_in
from tests.test_console_inbox import reply
from tests.test_forwarding import AUTH, say
from tests.test_staff_accounts import add_staff
from tests.test_worker import Workers, worker_env

pytestmark = [pytest.mark.processes, pytest.mark.postgres]

PEOPLE = [f"1555020{n:04d}" for n in range(3)]


@pytest.fixture
def app(redis_url, graph, receiver):
    config = app_config(
        migrated(fresh_postgres_url()), redis_url, graph, FORWARD_URL=receiver.url, FORWARD_SECRET=SECRET,
        FORWARD_RETRY_SECONDS=1, BOT_HANDLERS="examples.opening_hours", SWEEP_INTERVAL_SECONDS=1,
    )
    app = create_app(config)
    yield app
    services_of(app).dispose()


@pytest.fixture
def workers(app, tmp_path):
    settings = services_of(app).settings
    env = worker_env(
        app, LEDGER_SIGNING_KEY=settings.ledger_signing_key or "", LEDGER_CHECKPOINTS=settings.ledger_checkpoints,
        FORWARD_URL=settings.forward_url or "", FORWARD_SECRET=SECRET, FORWARD_RETRY_SECONDS="1", BOT_HANDLERS="examples.opening_hours",
    )
    pool = Workers(env, tmp_path)
    yield pool
    pool.stop_all()


def texts_sent(graph, to: str) -> list[str]:
    return [r.body["text"]["body"] for r in graph.requests if r.status == 200 and r.to == to and "text" in r.body]


def wait_for_text(graph, to: str, text: str, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while text not in (sent := texts_sent(graph, to)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return sent


def test_a_question_reaches_the_system_and_every_answer_reaches_the_user(app, client, graph, receiver, workers):
    workers.start()
    message_id = say(client, "hi, are you open on Sunday?", sender=PEOPLE[0])

    [event] = receiver.wait_for(1, "message", timeout=20)
    assert event["message"]["id"] == message_id
    assert HOURS in wait_for_text(graph, PEOPLE[0], HOURS)  # the example handler's answer, sent by the worker
    answer = client.post("/api/v1/messages", headers=AUTH, json={"to": PEOPLE[0], "text": "Yes, 10:00 to 14:00 this Sunday!"})
    assert answer.status_code == 202
    assert "Yes, 10:00 to 14:00 this Sunday!" in wait_for_text(graph, PEOPLE[0], "Yes, 10:00 to 14:00 this Sunday!")
    statuses = receiver.wait_for(1, "status", timeout=20)
    assert {s["message"]["status"] for s in statuses} <= {"sent", "delivered", "read"}

    add_staff(app, "ana@example.com", Role.OPERATOR)
    staff = app.test_client()
    sign_in(staff, "ana@example.com")
    assert reply(staff, PEOPLE[0], text="See you on Sunday, Ana").status_code == 302
    assert "See you on Sunday, Ana" in wait_for_text(graph, PEOPLE[0], "See you on Sunday, Ana")  # from the inbox, by the worker


def test_every_event_arrives_once_in_order_after_an_outage_a_redis_flush_and_a_restart(app, client, receiver, workers, tmp_path):
    receiver.answer = 503
    worker = workers.start()
    sent: dict[str, list[str]] = {person: [] for person in PEOPLE}
    for n in range(5):
        for person in PEOPLE:
            sent[person].append(say(client, f"order question {n}", sender=person))
    deadline = time.monotonic() + 20
    while len(receiver.posts) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert receiver.accepted() == [] and len(receiver.posts) >= 3
    while "Listening on" not in (tmp_path / "worker-0.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # RQ's warm shutdown on SIGTERM is ready
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    redis.Redis.from_url(services_of(app).settings.redis_url).flushdb()
    receiver.answer = 200
    workers.start()

    receiver.wait_for(15, "message", timeout=60)
    accepted = receiver.accepted("message")
    for person, message_ids in sent.items():
        assert [e["message"]["id"] for e in accepted if e["person"]["wa_id"] == person] == message_ids
    ids = [e["id"] for e in receiver.accepted()]
    assert len(ids) == len(set(ids))
    assert all(p.signed_right for p in receiver.posts)
    runner = app.test_cli_runner()
    status = runner.invoke(args=["forward", "status"]).output
    assert "FORWARD_URL" in status and "the receiver answered 503" in status


def test_a_reply_queued_before_a_stop_is_blocked_and_the_system_is_told(app, client, receiver, workers):
    say(client, "can I change my order?", sender=PEOPLE[1])
    queued = client.post("/api/v1/messages", headers=AUTH, json={"to": PEOPLE[1], "text": "Sure, what would you like?"})
    assert queued.status_code == 202
    say(client, "STOP", sender=PEOPLE[1])
    workers.start()

    deadline = time.monotonic() + 20
    while not (ours := [s for s in receiver.accepted("status") if s["message"]["id"] == queued.get_json()["id"]]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [(s["message"]["status"], s["message"]["reason"]) for s in ours] == [("blocked", "opted_out")]
    assert [c["consent"]["action"] for c in receiver.accepted("consent")] == ["opt_out"]
