"""Real worker processes (`python -m bot.outbound.worker`) sending through RQ on the real Redis to the
local Graph API imitation, including workers SIGKILLed in the middle of a campaign."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import redis
import sqlalchemy as sa

from bot import create_app
from bot.domain.consent import Action, Channel, EventDraft
from bot.domain.policy import MessageKind
from bot.services import services_of
from bot.settings import PROJECT_ROOT
from bot.storage.outbox import Message, QueueName, Template
from bot.storage.schema import outbound_messages
from tests.conftest import ADMIN_TOKEN, app_config, fresh_postgres_url
from tests.local_services import free_port, migrated

pytestmark = [pytest.mark.processes, pytest.mark.postgres]

TEMPLATE = Template("order_update", "en_US")


class Workers:
    """Worker processes started as the Procfile starts them, with the test's environment."""

    def __init__(self, env: dict[str, str], log_dir):
        self.env, self.log_dir, self.processes = env, log_dir, []

    def start(self) -> subprocess.Popen:
        log = open(self.log_dir / f"worker-{len(self.processes)}.log", "w")
        process = subprocess.Popen(
            [sys.executable, "-m", "bot.outbound.worker"], cwd=PROJECT_ROOT, env=self.env, stdout=log, stderr=log,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def kill(self, process: subprocess.Popen) -> None:
        """SIGKILL the worker and anything it started, as when its host dies."""
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.processes:
            self.kill(process)


@pytest.fixture(params=[300])
def campaign_app(request, redis_url, graph):
    """The app, its workers sending at `request.param` messages/second (parametrize indirectly to change it)."""
    database_url = migrated(fresh_postgres_url())
    app = create_app(app_config(database_url, redis_url, graph, SEND_RATE_LIMIT=request.param))
    yield app
    services_of(app).dispose()


def worker_env(app, **extra: str) -> dict[str, str]:
    """The environment of worker processes for `app`: its database, Redis and Graph API, and `extra`."""
    settings = services_of(app).settings
    return {
        "PATH": os.environ.get("PATH", ""), "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
        "GRAPH_API_URL": settings.graph_api_url, "WHATSAPP_TOKEN": "test-token",
        "WHATSAPP_PHONE_NUMBER_ID": settings.whatsapp_phone_number_id or "", "SWEEP_INTERVAL_SECONDS": "1", **extra,
    }


@pytest.fixture
def workers(campaign_app, tmp_path):
    env = worker_env(campaign_app, SEND_RATE_LIMIT=str(services_of(campaign_app).settings.send_rate_limit), SEND_LEASE_SECONDS="3")
    pool = Workers(env, tmp_path)
    yield pool
    pool.stop_all()


def opted_in_users(app, count: int) -> list[str]:
    users = [f"1555{n:07d}" for n in range(count)]
    services_of(app).ledger.append_many(
        EventDraft(u, Action.OPT_IN, Channel.WEB, f"form-{u}", "staff:test", consent_text="Send me updates", evidence={"form": "t"})
        for u in users
    )
    return users


def states(app) -> dict[str, int]:
    with services_of(app).ledger.engine.connect() as conn:
        query = sa.select(outbound_messages.c.state, sa.func.count()).group_by(outbound_messages.c.state)
        return dict(conn.execute(query).all())


def wait_until_final(app, total: int, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = states(app)
        if counts.get("queued", 0) == 0 and sum(counts.values()) == total:
            return counts
        time.sleep(0.25)
    return states(app)


def submit_campaign(app, users: list[str]) -> None:
    items = [(Message(u, MessageKind.UTILITY_TEMPLATE, template=TEMPLATE), f"campaign-1:{u}") for u in users]
    submissions = services_of(app).outbox.submit_many(items, "staff:test", QueueName.BULK, campaign_id="campaign-1")
    assert all(s.queued for s in submissions)


def test_workers_send_a_campaign_once_each(campaign_app, workers, graph):
    users = opted_in_users(campaign_app, 300)
    workers.start()
    workers.start()
    submit_campaign(campaign_app, users)
    assert wait_until_final(campaign_app, 300, timeout=60) == {"sent": 300}
    assert graph.sent_to() == {u: 1 for u in users}
    assert graph.count(130429) == 0


@pytest.mark.parametrize("campaign_app", [20], indirect=True)
def test_no_message_of_a_paused_campaign_leaves_after_the_pause_is_answered(campaign_app, workers, graph):
    """150 recipients at 20 messages/s, paused by staff after the first 20 sends: the messages
    the worker has claimed go back to the queue, none goes out, and the resume sends them."""
    users = opted_in_users(campaign_app, 150)
    result = services_of(campaign_app).campaigns.send(TEMPLATE, MessageKind.UTILITY_TEMPLATE, users, "staff:test")
    workers.start()
    deadline = time.monotonic() + 30
    while len(graph.requests) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    client = campaign_app.test_client()
    paused = client.post(f"/api/v1/campaigns/{result.campaign_id}/pause", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    answered = time.time()
    assert paused.status_code == 200 and paused.get_json()["status"] == "paused"
    time.sleep(3)  # a wave claimed and paced before the pause would have gone by now
    after = [request for request in graph.requests if request.at > answered]
    assert after == [] and 20 <= len(graph.requests) < 150
    counts = states(campaign_app)
    assert counts == {"sent": len(graph.requests), "queued": 150 - len(graph.requests)}  # none blocked: they wait
    sent_before_resume = len(graph.requests)
    resumed = client.post(f"/api/v1/campaigns/{result.campaign_id}/resume", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resumed.status_code == 200
    deadline = time.monotonic() + 10
    while len(graph.requests) < sent_before_resume + 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(graph.requests) >= sent_before_resume + 20  # the rest goes on


def test_workers_killed_mid_campaign_lose_nothing(campaign_app, workers, graph):
    """SIGKILL a worker four times during a 2,000-message campaign: every message still ends
    sent, and a message is sent twice only if its first call was in flight at a kill."""
    users = opted_in_users(campaign_app, 2000)
    graph.latency = 0.05
    # A live worker's claims must be sent within their lease, or the sweeper hands them to another
    # worker and both send them (bot.storage.outbox: the lease outlasts the pacing). The 3 s leases
    # bring a killed worker's messages back soon; with 20 call threads a worker holds 30 claims
    # (1.5 x its threads), sent well within 3 s even on a loaded machine, where 100 threads' 150
    # were not (duplicates long after the last kill). 20 threads still send 400 messages/s each.
    workers.env["SEND_CONCURRENCY"] = "20"
    running = [workers.start(), workers.start()]
    submit_campaign(campaign_app, users)
    kills = []
    for round_ in range(4):
        time.sleep(1.2)
        victim = running.pop(round_ % 2 and -1)
        kills.append(time.time())
        workers.kill(victim)
        running.append(workers.start())
    assert wait_until_final(campaign_app, 2000, timeout=120) == {"sent": 2000}
    sent = graph.sent_to()
    assert set(sent) == set(users)  # nobody lost
    duplicated = {to for to, n in sent.items() if n > 1}
    first_sent = {}
    for request in graph.requests:
        if request.status == 200:
            first_sent.setdefault(request.to, request.at)
    # In flight: the first call reached the Graph API just before a kill (within its latency plus
    # the moments to record the answer), or was still in the dead worker's socket at the kill.
    around_a_kill = {to for to in duplicated if any(k - graph.latency - 1.0 <= first_sent[to] <= k + 0.5 for k in kills)}
    details = {to: ([round(r.at - kills[0], 2) for r in graph.requests if r.to == to]) for to in duplicated - around_a_kill}
    assert duplicated == around_a_kill, (details, [round(k - kills[0], 2) for k in kills])
    print(f"\nkill test: 4 SIGKILLs, {len(duplicated)} messages sent twice, all in flight at a kill")


def test_a_worker_outlives_a_redis_restart_and_sends_what_came_before_and_after(campaign_app, workers, graph, tmp_path):
    """Redis restarted mid-campaign (its own real server here, not the shared one): the worker
    process stays up, and every message, queued before or after the restart, is sent once."""
    port = free_port()
    server = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    redis_server = subprocess.Popen(server, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_redis(port)
        url = f"redis://127.0.0.1:{port}/0"
        app = create_app({**app_config(services_of(campaign_app).settings.database_url, url, graph), "SEND_RATE_LIMIT": 300})
        workers.env["REDIS_URL"] = url
        worker = workers.start()
        users = opted_in_users(app, 200)
        submit_campaign(app, users[:100])
        time.sleep(1.0)
        redis_server.kill()
        redis_server.wait()
        time.sleep(1.0)
        redis_server = subprocess.Popen(server, stdout=subprocess.DEVNULL, start_new_session=True)
        wait_for_redis(port)
        items = [(Message(u, MessageKind.UTILITY_TEMPLATE, template=TEMPLATE), f"campaign-2:{u}") for u in users[100:]]
        services_of(app).outbox.submit_many(items, "staff:test", QueueName.BULK)
        # Jobs lost with the restart come back through the sweeper; new ones arrive on the new server.
        assert wait_until_final(app, 200, timeout=60) == {"sent": 200}
        assert worker.poll() is None, "the worker process quit with Redis"
        assert set(graph.sent_to()) == set(users)
    finally:
        redis_server.kill()
        redis_server.wait()


def wait_for_redis(port: int) -> None:
    connection = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            connection.ping()
            return
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server on port {port} did not start")
