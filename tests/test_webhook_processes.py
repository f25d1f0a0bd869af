"""The webhook served as in production, by gunicorn with two worker processes: the same POST
delivered 20 times at once has its effects once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis
import requests
import sqlalchemy as sa

from bot.settings import PROJECT_ROOT
from bot.storage.db import make_engine
from bot.storage.schema import consent_events, outbound_messages
from tests.conftest import APP_SECRET, fresh_postgres_url
from tests.helpers import USER
from tests.local_services import free_port, migrated
from tests.test_webhook import payload, sign

pytestmark = [pytest.mark.processes, pytest.mark.postgres]


@pytest.fixture
def served(redis_url, tmp_path):
    database_url, port = migrated(fresh_postgres_url()), free_port()
    env = {
        "PATH": os.environ.get("PATH", ""), "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "WHATSAPP_APP_SECRET": APP_SECRET, "BUSINESS_NAME": "Acme Bakery",
    }
    log = open(tmp_path / "gunicorn.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "wsgi:app", "--workers", "2", "--bind", f"127.0.0.1:{port}",
         "--control-socket", str(tmp_path / "gunicorn.ctl")],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or no worker booted yet
                time.sleep(0.2)
        yield url, database_url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_the_same_post_twenty_times_at_once_has_one_set_of_effects(served, redis_url):
    url, database_url = served
    raw = json.dumps(payload("stop_message.json")).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)}
    start, statuses = threading.Barrier(20), []

    def deliver() -> None:
        start.wait()
        statuses.append(requests.post(f"{url}/webhook", data=raw, headers=headers, timeout=30).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 20
    engine = make_engine(database_url)
    with engine.connect() as conn:
        events = conn.execute(sa.select(consent_events.c.action).where(consent_events.c.identifier == USER)).scalars().all()
        sent = conn.execute(sa.select(outbound_messages.c.kind).where(outbound_messages.c.recipient == USER)).scalars().all()
    engine.dispose()
    assert sorted(events) == ["implicit", "opt_out"]
    assert sent == ["stop_confirmation"]
    assert redis.Redis.from_url(redis_url).llen("rq:queue:replies") == 1
