"""Forwarding under load: inbound messages at a fixed rate, with FORWARD_URL off, then on.

It runs the bot twice in one run, each time on a freshly started stack with the same settings:
PostgreSQL schema `bench_forwarding` of the database `test` ($BENCH_POSTGRES_SCHEMA) and Redis
database 10 ($BENCH_REDIS_URL), both emptied and the schema migrated (`flask db upgrade`) first;
`gunicorn wsgi:app` served as bench/webhook_load.py serves it (2 workers as gunicorn.conf.py sets
them), one `python -m bot.outbound.worker`, and the Graph API imitation (sandbox/graph_imitation.py,
in this process, 150 ms per call) that the worker sends the bot's welcomes to. Each send the
imitation accepts is reported back to the bot a second later as Meta would: one signed webhook
with its `sent` and `delivered` statuses.

1. forwarding off: no FORWARD_URL.
2. forwarding on: FORWARD_URL is a local receiver (a threaded HTTP server in a process of its
   own) and FORWARD_SECRET a new random value. The receiver checks each POST's X-Signature-256
   (HMAC-SHA256 of the body), holds it 50 ms, answers 200 and notes the event's id, type, person,
   the message's wamid and when it arrived.

In each phase a load generator in its own process posts signed webhook bodies (Meta's shape,
X-Hub-Signature-256), one ordinary text each (no consent keyword, a new wamid each), open loop at
a fixed 200 messages/s for 60 s after a 2 s warm-up whose latencies are not reported. The senders
are phone users (1555...): 100 write at a time, each 6 messages 0.5 s apart at 200/s, then the
next 100 (2,000 people in 60 s), so each person's messages have an order. Latency runs from each
request's scheduled time to its answer, so a server falling behind shows in it. With forwarding
on, the bench then waits for the backlog: until every message answered 200 was forwarded, nothing
new arrived for 10 s, or 60 s passed.

Reported per phase: messages answered 200; webhook p50 / p99 / max, and the lowest and highest p99
of the phase's sixths (how much p99 moves within one phase: its noise); CPU ms per message of the
web processes (over the load) and of the worker (over the load and the wait for the backlog). For
forwarding on: message events received against the messages answered 200, lost (answered 200,
never forwarded), doubled (an event id received again; a wamid forwarded as two events), messages
forwarded that were never answered 200, per-person order violations (a message that arrived before
one its sender posted earlier; those posted while the earlier one was still unanswered are counted
apart, as the bot could not know their order), bad signatures, the forwarding lag (arrival at the
receiver minus the moment the webhook POST was answered 200; both on CLOCK_MONOTONIC, which the
processes of one host share) p50 / p99 / max, and the status and consent events received.

Target: at 200 messages/s with a receiver answering in 50 ms, webhook p99 with forwarding on is
that with forwarding off within noise; forwarding lag p99 quoted; nothing lost or doubled. It is a
measurement, not a test: it exits 0 whatever the results, non-zero only on a crash. Needs
PostgreSQL and Redis as the tests do. Run from the repository root:

    .venv/bin/python bench/forwarding.py                     # 60 s at 200 messages/s per phase
    .venv/bin/python bench/forwarding.py --quick             # 10 s at 50 messages/s per phase, for CI
    .venv/bin/python bench/forwarding.py --seconds 30 --rate 300
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import hashlib
import hmac
import json
import math
import multiprocessing
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from rq import Worker  # noqa: E402

from bench.webhook_load import (  # noqa: E402
    APP_SECRET,
    PAYLOADS,
    PHONE_NUMBER_ID,
    VERIFY_TOKEN,
    WORKERS,
    Request,
    Server,
    _timed,
    contact_of,
    gunicorn,
    percentile,
    process_cpu,
    sign,
)
from sandbox.graph_imitation import GraphImitation, Received  # noqa: E402
from tests.local_services import fresh_postgres_schema, migrated, stop_group  # noqa: E402

SCHEMA = os.environ.get("BENCH_POSTGRES_SCHEMA", "bench_forwarding")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")

RATE, SECONDS = 200, 60.0  # messages/s offered, and for how long, per phase
QUICK_RATE, QUICK_SECONDS = 50, 10.0
WARMUP = 2.0  # s of load before the measured part (forwarded and checked, latencies not reported)
ACTIVE_SENDERS = 100  # people writing at a time
MESSAGES_PER_SENDER = 6  # each, one after another, then the next group of people
TEXTS = ("hi, is the shop open on Sunday? #{n}", "Do you have oat milk today? #{n}", "Can I pick up my order at 5? #{n}")

RECEIVER_DELAY = 0.05  # s the receiver holds each POST before answering 200
GRAPH_LATENCY = 0.15  # s the imitation takes per send, as in the other benches
STATUS_DELAY = 1.0  # s after the imitation accepted a send, its statuses are posted
DRAIN_LIMIT = 60.0  # s to wait at most for the forwarding backlog after the load
DRAIN_QUIET = 10.0  # ... or until nothing new arrived for this long
WINDOWS = 6  # p99 of each sixth of a phase: how much it moves within one phase
WORKER_START_LIMIT = 60.0  # s

MESSAGE_TEMPLATE = (PAYLOADS / "text_message.json").read_text(encoding="utf-8")
STATUS_TEMPLATE = (PAYLOADS / "status_delivered.json").read_text(encoding="utf-8")


# -- the traffic ----------------------------------------------------------------------------


def sender_of(tag: int, slot: int) -> str:
    """Who writes the `slot`th message: ACTIVE_SENDERS people take turns, each writing
    MESSAGES_PER_SENDER messages, then the next ACTIVE_SENDERS people."""
    block, within = divmod(slot, ACTIVE_SENDERS * MESSAGES_PER_SENDER)
    return f"1555{tag}{block * ACTIVE_SENDERS + within % ACTIVE_SENDERS:06d}"


def message_request(tag: int, slot: int) -> tuple[Request, str, str]:
    """The signed webhook body of the `slot`th message (an ordinary text), its wamid and its sender."""
    sender, wamid = sender_of(tag, slot), f"wamid.bench-forward-{tag}-{slot}"
    body = json.loads(MESSAGE_TEMPLATE)
    value = body["entry"][0]["changes"][0]["value"]
    value["contacts"] = [contact_of(sender)]
    value["messages"][0].update({
        "from": sender, "id": wamid, "timestamp": str(int(time.time())), "text": {"body": TEXTS[slot % len(TEXTS)].format(n=slot)},
    })
    raw = json.dumps(body).encode()
    return Request(raw, sign(raw), events=1, stops=0), wamid, sender


def status_body(sent: Received) -> bytes:
    """Meta's webhook for an accepted send: its `sent` and `delivered` statuses."""
    body = json.loads(STATUS_TEMPLATE)
    value = body["entry"][0]["changes"][0]["value"]
    template, now = value["statuses"][0], str(int(time.time()))
    value["statuses"] = [{**template, "id": sent.meta_id, "status": status, "recipient_id": sent.to, "timestamp": now} for status in ("sent", "delivered")]
    value["contacts"] = [contact_of(sent.to)]
    return json.dumps(body).encode()


# -- the load generator (runs in its own process) ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoadSpec:
    port: int
    tag: int  # keeps people and wamids apart between phases
    rate: float  # messages/s
    seconds: float  # measured, after WARMUP


@dataclasses.dataclass(frozen=True)
class Answer:
    wamid: str
    sender: str
    warmup: bool
    posted: float  # time.monotonic() the request was due
    answered: float  # time.monotonic() its answer came (or the client gave up)
    status: str  # "200", another HTTP status, "timeout", or the name of the connection error

    @property
    def latency_ms(self) -> float:
        return (self.answered - self.posted) * 1000


def run_load(spec: LoadSpec) -> list[Answer]:
    return asyncio.run(_open_loop(spec))


async def _open_loop(spec: LoadSpec) -> list[Answer]:
    """Each message due at its slot / rate, whatever the answers so far."""
    loop = asyncio.get_running_loop()
    start, tasks = loop.time(), []
    warmup_slots = round(WARMUP * spec.rate)
    for slot in range(warmup_slots + round(spec.seconds * spec.rate)):
        request, wamid, sender = message_request(spec.tag, slot)
        due = start + slot / spec.rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        tasks.append(asyncio.create_task(_answer(spec.port, request, wamid, sender, slot < warmup_slots, due)))
    return list(await asyncio.gather(*tasks))


async def _answer(port: int, request: Request, wamid: str, sender: str, warmup: bool, due: float) -> Answer:
    outcome = await _timed(port, request, due)
    return Answer(wamid, sender, warmup, due, due + outcome.latency, outcome.status)


# -- the receiver (runs in its own process) ---------------------------------------------------


class ReceiverServer(ThreadingHTTPServer):
    """Takes forwarded events, a thread per connection (the bot may keep many open)."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, secret: bytes):
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.secret = secret
        self.lock = threading.Lock()
        self.arrivals: list[dict] = []

    def note(self, arrival: dict) -> None:
        with self.lock:
            self.arrivals.append(arrival)

    def arrivals_from(self, index: int) -> list[dict]:
        with self.lock:
            return self.arrivals[index:]


class ReceiverHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver serves
    server: ReceiverServer

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        arrived, wall = time.monotonic(), time.time()
        expected = "sha256=" + hmac.new(self.server.secret, raw, hashlib.sha256).hexdigest()
        signed = hmac.compare_digest(self.headers.get("X-Signature-256", ""), expected)
        self.server.note({**event_facts(raw), "signed": signed, "arrived": arrived, "wall": wall})
        time.sleep(RECEIVER_DELAY)
        self._reply(b"")

    def do_GET(self) -> None:
        """GET /_records?from=N: the arrivals from the Nth on, for the bench."""
        index = int(self.path.partition("from=")[2] or 0)
        self._reply(json.dumps(self.server.arrivals_from(index)).encode())

    def _reply(self, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


def event_facts(raw: bytes) -> dict:
    """What the bench checks of one forwarded event: its id, type, person and message wamid."""
    try:
        event = json.loads(raw)
        person = event.get("person") or {}
        message = event.get("message") or {}
        return {
            "id": event.get("id"), "type": event.get("type"), "wa_id": person.get("wa_id"),
            "user_id": person.get("user_id"), "wamid": message.get("id"),
        }
    except (ValueError, AttributeError):
        return {"id": None, "type": "unreadable", "wa_id": None, "user_id": None, "wamid": None}


def serve_receiver(secret: bytes, ports: multiprocessing.Queue) -> None:
    server = ReceiverServer(secret)
    ports.put(server.server_address[1])
    server.serve_forever()


class Receiver:
    """The receiver's process, from the bench's side: its URL, secret and arrivals so far."""

    def __init__(self, port: int, secret: str):
        self.url = f"http://127.0.0.1:{port}/events"
        self.secret = secret
        self._records_url = f"http://127.0.0.1:{port}/_records"
        self._arrivals: list[dict] = []

    def arrivals(self) -> list[dict]:
        with urllib.request.urlopen(f"{self._records_url}?from={len(self._arrivals)}", timeout=30) as answer:
            self._arrivals.extend(json.load(answer))
        return self._arrivals


@contextmanager
def receiver() -> Iterator[Receiver]:
    secret = secrets.token_hex(32)
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    process = context.Process(target=serve_receiver, args=(secret.encode(), ports), name="forward-receiver", daemon=True)
    process.start()
    try:
        yield Receiver(ports.get(timeout=30), secret)
    finally:
        process.terminate()
        process.join(timeout=10)


# -- the bot's stack --------------------------------------------------------------------------


class StatusReporter(threading.Thread):
    """Reports each send the imitation accepted back to the bot STATUS_DELAY s later, as Meta
    does: a signed webhook with its `sent` and `delivered` statuses."""

    def __init__(self, imitation: GraphImitation, port: int):
        super().__init__(name="status-reporter", daemon=True)
        self.imitation = imitation
        self.url = f"http://127.0.0.1:{port}/webhook"
        self.stopping = threading.Event()
        self.seen = 0  # of the imitation's requests
        self.statuses_acked = 0  # statuses in webhooks answered 200
        self.posts_failed = 0

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            for sent in self._due():
                self._report(sent)

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def _due(self) -> list[Received]:
        requests, cutoff, due = self.imitation.requests, time.time() - STATUS_DELAY, []
        while self.seen < len(requests) and requests[self.seen].at <= cutoff:
            if requests[self.seen].status == 200:
                due.append(requests[self.seen])
            self.seen += 1
        return due

    def _report(self, sent: Received) -> None:
        body = status_body(sent)
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(body)}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                answer.read()
            self.statuses_acked += 2
        except OSError:  # an HTTPError (not 200) too
            self.posts_failed += 1


@dataclasses.dataclass(frozen=True)
class Stack:
    server: Server
    worker: subprocess.Popen
    reporter: StatusReporter

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU used so far by the web processes and by the worker."""
        return self.server.cpu_seconds(), process_cpu(self.worker.pid)


@contextmanager
def bot_stack(forward: dict[str, str], logs: Path, name: str) -> Iterator[Stack]:
    """Emptied stores, the imitation, gunicorn, one worker and the status reporter, with the
    forwarding settings `forward`; stopped again on leaving."""
    database_url = migrated(fresh_postgres_schema(SCHEMA))
    connection = redis.Redis.from_url(REDIS_URL)
    connection.flushdb()
    imitation = GraphImitation(latency=GRAPH_LATENCY).start()
    env = {
        "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "GRAPH_API_URL": imitation.url, "WHATSAPP_TOKEN": "bench-token",
        "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID, "WHATSAPP_APP_SECRET": APP_SECRET, "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
        "BUSINESS_NAME": "Bench Bakery", **forward,
    }
    try:
        with gunicorn(Path(sys.executable), "wsgi:app", ROOT, env, logs / f"{name}-web.log") as server, \
                outbound_worker(env, connection, logs / f"{name}-worker.log") as worker:
            reporter = StatusReporter(imitation, server.port)
            reporter.start()
            try:
                yield Stack(server, worker, reporter)
            finally:
                reporter.stop()
    finally:
        imitation.stop()
        connection.close()


@contextmanager
def outbound_worker(env: dict[str, str], connection: redis.Redis, log: Path) -> Iterator[subprocess.Popen]:
    """`python -m bot.outbound.worker`, yielded once it waits for jobs."""
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot.outbound.worker"], cwd=ROOT, env={**os.environ, **env},
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + WORKER_START_LIMIT
        while Worker.count(connection=connection) < 1:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield process
    finally:
        stop_group(process)


# -- a phase ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Drain:
    seconds: float
    why: str


@dataclasses.dataclass(frozen=True)
class Phase:
    answers: list[Answer]
    web_cpu_ms: float  # per message posted, over the load
    worker_cpu_ms: float  # per message posted, over the load and the wait for the backlog
    statuses_acked: int  # statuses the reporter posted and the bot answered 200
    arrivals: list[dict]  # what the receiver got during the phase
    drain: Drain | None  # the wait for the forwarding backlog; None with forwarding off


def run_phase(pool: ProcessPoolExecutor, spec: LoadSpec, target: Receiver, forward: bool, logs: Path) -> Phase:
    """One phase on a fresh stack; `forward`: with FORWARD_URL set to `target`. Blank values
    otherwise, so that neither the environment nor .env can turn it on."""
    name = "on" if forward else "off"
    settings = {"FORWARD_URL": target.url, "FORWARD_SECRET": target.secret} if forward else {"FORWARD_URL": "", "FORWARD_SECRET": ""}
    before = len(target.arrivals())
    with bot_stack(settings, logs, name) as stack:
        print(f"forwarding {name}: {spec.rate:g} messages/s for {WARMUP:g} + {spec.seconds:g} s ...", flush=True)
        web, worker = stack.cpu_seconds()
        answers = pool.submit(run_load, dataclasses.replace(spec, port=stack.server.port)).result()
        web_after = stack.server.cpu_seconds()
        drain = wait_forwarded(target, before, answers) if forward else None
        worker_after = process_cpu(stack.worker.pid)
        statuses_acked = stack.reporter.statuses_acked
    return Phase(
        answers, (web_after - web) * 1000 / len(answers), (worker_after - worker) * 1000 / len(answers),
        statuses_acked, target.arrivals()[before:], drain,
    )


def wait_forwarded(target: Receiver, since: int, answers: list[Answer]) -> Drain:
    """Wait until every message answered 200 was forwarded, nothing new arrived for DRAIN_QUIET s, or DRAIN_LIMIT s passed."""
    expected = {a.wamid for a in answers if a.status == "200"}
    start = last_news = time.monotonic()
    count = -1
    while True:
        arrivals, now = target.arrivals()[since:], time.monotonic()
        if expected <= {a["wamid"] for a in arrivals if a["type"] == "message"}:
            return Drain(now - start, "all forwarded")
        if len(arrivals) > count:
            count, last_news = len(arrivals), now
        if now - last_news >= DRAIN_QUIET:
            return Drain(now - start, f"nothing new for {DRAIN_QUIET:g} s")
        if now - start >= DRAIN_LIMIT:
            return Drain(now - start, f"gave up after {DRAIN_LIMIT:g} s")
        time.sleep(0.5)


# -- the analysis -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Webhook:
    answered: int
    failed: dict[str, int]  # status -> requests without a 200
    p50_ms: float
    p99_ms: float
    max_ms: float
    window_p99_ms: tuple[float, float]  # lowest and highest p99 of the phase's sixths


def webhook_of(answers: list[Answer]) -> Webhook:
    measured = sorted((a for a in answers if not a.warmup), key=lambda a: a.posted)
    latencies = sorted(a.latency_ms for a in measured if a.status == "200")
    size = math.ceil(len(measured) / WINDOWS)
    windows = [sorted(a.latency_ms for a in measured[i : i + size] if a.status == "200") for i in range(0, len(measured), size)]
    window_p99 = [percentile(w, 0.99) for w in windows if w]
    return Webhook(
        answered=len(latencies),
        failed=collections.Counter(a.status for a in measured if a.status != "200"),
        p50_ms=percentile(latencies, 0.50), p99_ms=percentile(latencies, 0.99), max_ms=latencies[-1] if latencies else math.nan,
        window_p99_ms=(min(window_p99), max(window_p99)) if window_p99 else (math.nan, math.nan),
    )


@dataclasses.dataclass(frozen=True)
class Forwarding:
    acked: int  # messages answered 200, warm-up included
    forwarded: int  # of them, forwarded as a message event
    lost: int
    repeated_ids: int  # arrivals of an event id received before
    repeated_wamids: int  # wamids forwarded as more than one event (different ids)
    unacked_forwarded: int  # forwarded messages the webhook never answered 200
    out_of_order: int  # messages that arrived before one their sender posted earlier
    out_of_order_overlapping: int  # ... posted while that earlier one was still unanswered
    bad_signatures: int
    lag_ms: list[float]  # sorted
    types: collections.Counter  # event type -> events received

    @property
    def doubled(self) -> int:
        return self.repeated_ids + self.repeated_wamids


def forwarding_of(answers: list[Answer], arrivals: list[dict]) -> Forwarding:
    acked = {a.wamid: a for a in answers if a.status == "200"}
    first_arrival: dict[str, float] = {}
    ids_of: dict[str, set[str]] = collections.defaultdict(set)
    for arrival in sorted((a for a in arrivals if a["type"] == "message" and a["wamid"]), key=lambda a: a["arrived"]):
        first_arrival.setdefault(arrival["wamid"], arrival["arrived"])
        ids_of[arrival["wamid"]].add(arrival["id"])
    out_of_order, overlapping = order_violations([a for a in answers if a.wamid in first_arrival], first_arrival)
    return Forwarding(
        acked=len(acked),
        forwarded=sum(1 for wamid in acked if wamid in first_arrival),
        lost=sum(1 for wamid in acked if wamid not in first_arrival),
        repeated_ids=sum(n - 1 for n in collections.Counter(a["id"] for a in arrivals).values()),
        repeated_wamids=sum(len(ids) - 1 for ids in ids_of.values()),
        unacked_forwarded=sum(1 for wamid in first_arrival if wamid not in acked),
        out_of_order=out_of_order,
        out_of_order_overlapping=overlapping,
        bad_signatures=sum(1 for a in arrivals if not a["signed"]),
        lag_ms=sorted((first_arrival[wamid] - answer.answered) * 1000 for wamid, answer in acked.items() if wamid in first_arrival),
        types=collections.Counter(a["type"] for a in arrivals),
    )


def order_violations(forwarded: list[Answer], first_arrival: dict[str, float]) -> tuple[int, int]:
    """Messages that arrived before one their sender posted earlier, and how many of those were
    posted while that earlier one was still unanswered (their order was the bot's to choose)."""
    by_sender: dict[str, list[Answer]] = collections.defaultdict(list)
    for answer in forwarded:
        by_sender[answer.sender].append(answer)
    violations = overlapping = 0
    for messages in by_sender.values():
        latest: Answer | None = None  # of the messages posted so far, the one that arrived last
        for message in sorted(messages, key=lambda a: a.posted):
            if latest is not None and first_arrival[message.wamid] < first_arrival[latest.wamid]:
                violations += 1
                overlapping += message.posted < latest.answered
            else:
                latest = message
    return violations, overlapping


# -- the report -------------------------------------------------------------------------------


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def table(phases: dict[str, Phase], spec: LoadSpec) -> str:
    webhooks = {name: webhook_of(phase.answers) for name, phase in phases.items()}
    on = forwarding_of(phases["on"].answers, phases["on"].arrivals)
    lines = [f"{'':<50}" + "".join(f"{name:>14}" for name in phases)]

    def row(label: str, cell: Callable[[str], str]) -> None:
        lines.append(f"{label:<50}" + "".join(f"{cell(name):>14}" for name in phases))

    def on_only(label: str, value: str) -> None:
        row(label, lambda name: value if name == "on" else "-")

    lines.append(f"webhook, open loop, {spec.rate:g} messages/s offered, {spec.seconds:g} s")
    row("  answered 200", lambda name: str(webhooks[name].answered))
    row("  without a 200", lambda name: str(sum(webhooks[name].failed.values())))
    row("  p50 ms", lambda name: ms(webhooks[name].p50_ms))
    row("  p99 ms", lambda name: ms(webhooks[name].p99_ms))
    row("  max ms", lambda name: ms(webhooks[name].max_ms))
    row(f"  p99 of each 1/{WINDOWS} of the phase, lowest-highest ms", lambda name: "-".join(map(ms, webhooks[name].window_p99_ms)))
    row("  web processes' CPU ms per message", lambda name: f"{phases[name].web_cpu_ms:.2f}")
    row("  worker's CPU ms per message", lambda name: f"{phases[name].worker_cpu_ms:.2f}")
    row("  statuses posted back (sent, delivered), 200", lambda name: str(phases[name].statuses_acked))
    lines.append(f"forwarding, receiver answering in {RECEIVER_DELAY * 1000:.0f} ms (warm-up included)")
    row("  events received (any type)", lambda name: str(len(phases[name].arrivals)))
    on_only("  inbound messages answered 200", str(on.acked))
    on_only("  message events received (distinct wamids)", str(on.forwarded))
    on_only("  lost (answered 200, never forwarded)", str(on.lost))
    on_only("  doubled: event id received again", str(on.repeated_ids))
    on_only("  doubled: wamid forwarded as another event", str(on.repeated_wamids))
    on_only("  forwarded, never answered 200", str(on.unacked_forwarded))
    on_only("  per-person order violations", str(on.out_of_order))
    on_only("    of which posted before the earlier's 200", str(on.out_of_order_overlapping))
    on_only("  bad signatures", str(on.bad_signatures))
    on_only("  lag p50 ms (arrival - webhook's 200)", ms(percentile(on.lag_ms, 0.50)))
    on_only("  lag p99 ms", ms(percentile(on.lag_ms, 0.99)))
    on_only("  lag max ms", ms(on.lag_ms[-1] if on.lag_ms else math.nan))
    on_only("  status events received", str(on.types["status"]))
    on_only("  consent events received", str(on.types["consent"]))
    others = {kind: n for kind, n in on.types.items() if kind not in ("message", "status", "consent")}
    if others:
        on_only("  events of other types", ", ".join(f"{kind} {n}" for kind, n in sorted(others.items(), key=str)))
    drain = phases["on"].drain
    on_only("  s waited for the backlog", f"{drain.seconds:.1f}" if drain else "-")
    if drain:
        lines.append(f"the wait for the backlog ended: {drain.why}")
    for name, webhook in webhooks.items():
        if webhook.failed:
            lines.append(f"without a 200, forwarding {name}: " + ", ".join(f"{n} {status}" for status, n in sorted(webhook.failed.items())))
    return "\n".join(lines)


def verdict(phases: dict[str, Phase]) -> str:
    off, on = webhook_of(phases["off"].answers).p99_ms, webhook_of(phases["on"].answers).p99_ms
    forwarding = forwarding_of(phases["on"].answers, phases["on"].arrivals)
    return (
        f"verdict: webhook p99 on {ms(on)} ms vs off {ms(off)} ms ({on - off:+.1f} ms, {(on - off) / off:+.0%}); "
        f"forwarding lag p99 {ms(percentile(forwarding.lag_ms, 0.99))} ms; lost {forwarding.lost} of {forwarding.acked}; "
        f"doubled {forwarding.doubled} (web CPU per message on {phases['on'].web_cpu_ms:.2f} ms vs off {phases['off'].web_cpu_ms:.2f} ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Webhook latency with forwarding off and on, and what a local receiver got.")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SECONDS:g} s at {QUICK_RATE} messages/s per phase (CI)")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="seconds of load per phase, after the warm-up")
    parser.add_argument("--rate", type=float, default=RATE, help="inbound messages/s offered")
    options = parser.parse_args()
    rate, seconds = (QUICK_RATE, QUICK_SECONDS) if options.quick else (options.rate, options.seconds)
    spec = LoadSpec(port=0, tag=0, rate=rate, seconds=seconds)
    logs = Path(tempfile.mkdtemp(prefix="forwarding-bench-"))
    print(
        f"gunicorn ({WORKERS} workers), 1 bot worker, Graph API imitation {GRAPH_LATENCY * 1000:.0f} ms per call; {rate:g} messages/s for "
        f"{seconds:g} s per phase from {ACTIVE_SENDERS} people at a time; receiver {RECEIVER_DELAY * 1000:.0f} ms; logs in {logs}",
        flush=True,
    )
    with receiver() as target, ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        phases = {
            "off": run_phase(pool, dataclasses.replace(spec, tag=1), target, forward=False, logs=logs),
            "on": run_phase(pool, dataclasses.replace(spec, tag=2), target, forward=True, logs=logs),
        }
    print(table(phases, spec))
    print(verdict(phases))


if __name__ == "__main__":
    main()
