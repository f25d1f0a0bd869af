"""The RQ queues: `replies` (answers to users, served first) and `bulk` (campaigns, staff sends).

Jobs carry message ids only; the outbox row is the message. Ids are grouped so that a
campaign of 100,000 messages is 500 jobs, not 100,000.
"""
from __future__ import annotations

import redis
from rq import Queue

from bot.storage.outbox import Enqueue, QueueName

JOB_SIZE = 200
SEND_JOB = "bot.outbound.jobs.send_messages"


def make_queues(connection: redis.Redis) -> dict[QueueName, Queue]:
    return {name: Queue(name.value, connection=connection) for name in QueueName}


def enqueuer(queues: dict[QueueName, Queue]) -> Enqueue:
    """The Outbox's way into RQ: one send job per group of message ids."""

    def enqueue(queue: QueueName, message_ids: list[str]) -> None:
        target = queues[queue]
        jobs = [
            # A job waits while its worker's send threads are busy: at a low rate cap that can be minutes.
            Queue.prepare_data(
                SEND_JOB, args=(message_ids[start : start + JOB_SIZE],), timeout=3600, result_ttl=600, failure_ttl=86400
            )
            for start in range(0, len(message_ids), JOB_SIZE)
        ]
        target.enqueue_many(jobs)

    return enqueue
