"""GET /healthz against the real database and Redis, and with each of them unreachable."""
from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bot.services import services_of
from bot.storage.db import make_engine


def test_healthy_when_database_and_redis_answer(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok", "redis": "ok"}


def test_names_redis_when_it_does_not_answer(app, client):
    services_of(app).redis = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["error"] == "unhealthy" and body["detail"].startswith("redis: ")
    assert "database" not in body["detail"]


def test_names_the_database_when_it_does_not_answer(app, client):
    services_of(app).engine = make_engine("postgresql://postgres@127.0.0.1:1/test")
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["detail"].startswith("database: ")
    assert "Traceback" not in response.get_data(as_text=True)
