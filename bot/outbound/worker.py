"""`python -m bot.outbound.worker`: an RQ worker for the replies and bulk queues, and the sweeper.

The sweeper is the worker's scheduler: every SWEEP_INTERVAL_SECONDS it queues the messages
whose retry came due, whose worker died mid-send, or whose job was lost, and applies delivery
statuses that arrived before their send was recorded; every LEDGER_CHECKPOINT_SECONDS one worker
signs a checkpoint of the ledger (bot.storage.integrity). The outbox row, not
a job in Redis, is what says a message still has to go, so nothing is lost with a job or a
worker. RQ's own scheduler is not used: it forks a child that inherits the worker's database
connections and outlives a worker killed with SIGKILL.

Workers are `SimpleWorker`s (no fork per job): each keeps its services, pools and send threads.
Several may run on one host or many; they share the queues, the limiter and the sweeper lock.
"""
from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable
from datetime import timedelta

import redis
from rq import Queue, SimpleWorker

from bot.outbound.forwarder import Forwarder, listen_for_wakes, post_to, run_handlers
from bot.outbound.jobs import SendRuntime, use_runtime
from bot.plugins import HandlersNotFound, load_handlers
from bot.services import STARTUP_ERRORS, Services, build_services, sync_templates, warn_without_catalog
from bot.settings import load_settings
from bot.storage.conversations import forget_before
from bot.storage.forwarding import Destination
from bot.storage.integrity import Checkpoint, write_checkpoint
from bot.storage.ledger import Ledger
from bot.storage.migrate import require_current
from bot.storage.outbox import Outbox, QueueName

log = logging.getLogger(__name__)

SWEEPER_LOCK = "whatsapp:sweeper"
CHECKPOINT_LOCK = "whatsapp:ledger-checkpoint"  # held for a period by the worker that signed the last checkpoint
CHECKPOINTED_HEAD = "whatsapp:ledger-checkpoint:head"  # the seq and hash it signed
TEMPLATE_SYNC_LOCK = "whatsapp:template-sync"  # held for a period by the worker that synced the catalog last
SYNC_RETRY_SECONDS = 30
TIDY_LOCK = "whatsapp:tidy"  # held for a period by the worker that removed old messages last
TIDY_SECONDS = 3600  # after a failed template sync, the next try is this soon


def sweep(outbox: Outbox, queues: dict[QueueName, Queue], connection: redis.Redis, every: float) -> int | None:
    """Queue due retries and lost messages; one sweeper per round across all workers.
    Returns how many, or None when this round is another worker's."""
    if not connection.set(SWEEPER_LOCK, "1", nx=True, px=int(every * 900)):
        return None
    idle = {name: queue.count == 0 for name, queue in queues.items()}
    lost: dict[QueueName, list[str]] = {}
    for message_id, queue, was_claimed in outbox.due_for_recovery(timedelta(seconds=2 * every)):
        # An unclaimed message may simply be waiting in a long queue: only an idle queue proves it lost.
        if was_claimed or idle[queue]:
            lost.setdefault(queue, []).append(message_id)
    for queue, message_ids in lost.items():
        outbox.enqueue(queue, message_ids)
        outbox.requeued(message_ids)
    count = sum(map(len, lost.values()))
    if count:
        log.info("sweeper queued %d due or lost message(s)", count)
    outbox.apply_early_statuses()
    return count


def checkpoint_when_due(ledger: Ledger, where: str, connection: redis.Redis, every: int) -> Checkpoint | None:
    """Sign a checkpoint of the ledger head and write it to `where`, at most once every `every`
    seconds across all workers, and only when the head moved since the last one. Returns it, or
    None. One that fails is tried again a period later (`flask consent checkpoint` any time)."""
    if not connection.set(CHECKPOINT_LOCK, "1", nx=True, ex=every):
        return None
    seq, head_hash = ledger.head()
    if connection.get(CHECKPOINTED_HEAD) == f"{seq}:{head_hash}".encode():
        return None
    checkpoint = ledger.key.checkpoint(seq, head_hash, ledger.clock())
    write_checkpoint(checkpoint, where)
    connection.set(CHECKPOINTED_HEAD, f"{seq}:{head_hash}")
    return checkpoint


def sync_templates_when_due(services: Services, connection: redis.Redis, every: int, force: bool = False) -> int | None:
    """Sync the template catalog when no worker did in the last `every` seconds (or `force`: at
    a worker's start); how many templates it holds, or None when it was not this worker's turn.
    A sync that fails is tried again SYNC_RETRY_SECONDS later, not a period later: a worker that
    started while Meta did not answer must not leave the catalog empty for an hour."""
    if not services.settings.whatsapp_business_account_id:
        return None
    if force:
        connection.set(TEMPLATE_SYNC_LOCK, "1", ex=every)
    elif not connection.set(TEMPLATE_SYNC_LOCK, "1", nx=True, ex=every):
        return None
    try:
        return sync_templates(services)
    except Exception:
        connection.set(TEMPLATE_SYNC_LOCK, "1", ex=min(every, SYNC_RETRY_SECONDS))
        raise


def tidy_when_due(services: Services, every: int = TIDY_SECONDS) -> tuple[int, int] | None:
    """Remove inbound messages past MESSAGE_RETENTION_DAYS and forwarded events delivered long
    ago, at most once every `every` seconds across all workers: (messages, events) removed."""
    if not services.redis.set(TIDY_LOCK, "1", nx=True, ex=every):
        return None
    cutoff = services.ledger.clock() - timedelta(days=services.settings.message_retention_days)
    return forget_before(services.engine, cutoff), services.forward_queue.forget_delivered()


def _sync_templates(services: Services, force: bool = False) -> None:
    try:
        count = sync_templates_when_due(services, services.redis, services.settings.template_sync_seconds, force)
        if count is not None:
            log.info("synced %d message template(s) from Meta", count)
    except Exception as error:  # SyncFailed, or a database or Redis outage: the last good catalog stays
        log.warning("template sync failed (%s); the next is due in %d s", error, services.settings.template_sync_seconds)


def _sweep_forever(send_runtime: SendRuntime, stop: threading.Event) -> None:
    services = send_runtime.services
    settings = services.settings
    every = settings.sweep_interval_seconds
    try:  # the first checkpoint is due a period after the first worker started, so that short-lived
        # workers (tests, a quick local run) leave none behind; `flask consent checkpoint` makes one any time
        services.redis.set(CHECKPOINT_LOCK, "1", nx=True, ex=settings.ledger_checkpoint_seconds)
    except redis.RedisError:
        pass  # then the first round after Redis answers again signs one
    _sync_templates(services, force=True)
    while not stop.wait(every):
        _sync_templates(services)
        try:
            if sweep(services.outbox, send_runtime.queues, services.redis, every) is not None:
                services.campaigns.enforce_opt_out_limit()  # R11: pause campaigns that drive users away
        except Exception:  # a database or Redis outage: try again next round
            log.exception("sweep failed")
        try:
            removed = tidy_when_due(services)
            if removed is not None and any(removed):
                log.info("removed %d inbound message(s) past retention and %d delivered event(s)", *removed)
        except Exception:
            log.exception("removing old messages failed; the next try is due in %d s", TIDY_SECONDS)
        try:
            made = checkpoint_when_due(services.ledger, settings.ledger_checkpoints, services.redis, settings.ledger_checkpoint_seconds)
            if made is not None:
                log.info("signed a ledger checkpoint of seq %d", made.seq)
        except Exception:
            log.exception("ledger checkpoint failed; the next is due in %d s", settings.ledger_checkpoint_seconds)


def _forwarders(services: Services) -> list[Forwarder]:
    """A delivery loop for FORWARD_URL and one for BOT_HANDLERS, where set (SPEC §9)."""
    settings, queue = services.settings, services.forward_queue
    forwarders = []
    if settings.forward_url and settings.forward_secret:
        forwarders.append(Forwarder(queue, Destination.URL, post_to(settings.forward_url, settings.forward_secret)))
    if settings.bot_handlers:
        handlers = load_handlers(settings.bot_handlers)
        forwarders.append(Forwarder(queue, Destination.HANDLERS, run_handlers(handlers, services.ledger, services.outbox)))
    return forwarders


def _start_forwarders(services: Services, forwarders: list[Forwarder], stop: threading.Event) -> list[threading.Thread]:
    """Start the delivery loops; their threads, to wait for at shutdown (deliveries in flight finish)."""
    if not forwarders:
        return []
    threads = [threading.Thread(target=f.run, args=(stop,), name=f"forward-{f.destination.value}") for f in forwarders]
    for thread in threads:
        thread.start()
    # Its own connection: the blocking pop outlasts the services' client's socket timeout.
    connection = redis.Redis.from_url(services.settings.redis_url)
    threading.Thread(target=listen_for_wakes, args=(connection, forwarders, stop), name="forward-wakes", daemon=True).start()
    return threads


def _work_through_redis_outages(make_worker: Callable[[], SimpleWorker], stop: threading.Event) -> None:
    """Run RQ's worker loop until a warm shutdown (SIGTERM, Ctrl-C).

    RQ's worker quits when Redis drops while it finishes a job; a worker process must outlive
    a Redis restart, so it waits and starts a fresh loop, as long as it is not told to stop.
    """
    pause = 1.0
    while True:
        try:
            make_worker().work()
            return
        except redis.RedisError as error:
            log.warning("lost Redis (%s); working again in %.0f s", error, pause)
        for signum in (signal.SIGTERM, signal.SIGINT):  # RQ's handlers belong to the worker that quit
            signal.signal(signum, lambda *_: stop.set())
        if stop.wait(pause):
            return
        pause = min(pause * 2, 30.0)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        services = build_services(load_settings())
        require_current(services.engine)
    except STARTUP_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    warn_without_catalog(services.settings)
    try:
        forwarders = _forwarders(services)
    except HandlersNotFound as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    send_runtime = SendRuntime(services)
    use_runtime(send_runtime)
    # The services' objects live as long as the process: left out of garbage collection, a full
    # collection no longer stalls every send thread for some 30 ms, long enough to miss slots.
    gc.freeze()
    # A send thread that wakes at its slot while another thread runs Python waits for the
    # interpreter up to this long (5 ms by default) per thread ahead of it; sends that go out
    # late crowd the next second or, later than LATE_SLOT, lose their slot.
    sys.setswitchinterval(0.001)
    stop = threading.Event()
    threading.Thread(target=_sweep_forever, args=(send_runtime, stop), name="sweeper", daemon=True).start()
    forwarding = _start_forwarders(services, forwarders, stop)
    queues = [send_runtime.queues[QueueName.REPLIES], send_runtime.queues[QueueName.BULK]]  # replies first
    # Its own connection: RQ's blocking dequeue outlasts the services' client's socket timeout.
    connection = redis.Redis.from_url(services.settings.redis_url)
    try:
        _work_through_redis_outages(lambda: SimpleWorker(queues, connection=connection), stop)
    finally:
        stop.set()
        send_runtime.shutdown()  # let sends in flight finish and record their outcome
        for thread in forwarding:  # ... and deliveries
            thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
