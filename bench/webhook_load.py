"""Webhook intake under load: signed POST /webhook bodies against gunicorn, our bot beside pywa.

It starts `gunicorn wsgi:app` with 2 workers as gunicorn.conf.py sets them (threaded) on a free 127.0.0.1 port (PostgreSQL schema
`bench_webhook` of the database `test` ($BENCH_POSTGRES_SCHEMA), Redis database 12 ($BENCH_REDIS_URL),
both emptied first, then given the history of 100,000 earlier users (`with_history`); no RQ
worker, so queued replies just wait), then drives it from a separate load-generator process with a mix
of bodies in the shapes of tests/fixtures/payloads: mostly new users saying hello (a new user
and message id each), STOPs from users seen before, STARTs from users who stopped,
delivered / read statuses for message ids the bot never sent, and batches of several messages
and a status (batch_mixed.json). Timestamps are now and every body is signed with
X-Hub-Signature-256. "Events" are the messages plus statuses in the bodies that were answered 200.

Users come in two kinds. Phone users (wa_id 1555...) write with `from`, statuses name them with
`recipient_id`, and their contacts entry carries their wa_id and a business-scoped user id
(`user_id`, `US.` and the wa_id), as Meta sends both now (pywa 4.5 also drops a message or
status without a user_id): our bot links the two, one person. BSUID-only users (username
users, `US.` and 20 digits; a third of the new users by default, `--bsuid-only-share`, 0 for
phone users only) have no phone for the business: their messages carry `from_user_id` and no
`from`, their statuses `recipient_user_id` and no `recipient_id`, and their contacts entry
only their `user_id` and `profile.username`, as in Meta's username-only payloads. The history
the bot starts with has the same share of BSUID-only people.

Phases, after a short warm-up that is not reported:

1. open loop: requests scheduled at a fixed 320 events/s whatever the answers; latency runs
   from each request's scheduled time, so a server falling behind shows in it.
2. closed loop: a fixed number of connections each posting as soon as its last answer came:
   the events/s the server sustains.

Each phase reports events/s answered 200 (over the time from its start to its last answer),
p50 / p99 / max latency until the answer (each request opens its own connection and asks
for it to be closed, so each includes its TCP connect), the requests without a 200 (a request unanswered after 30 s counts
as a timeout), the load generator's own CPU, the server's (gunicorn's processes) and, for our bot, that of the
PostgreSQL backends serving it (Redis not included) in ms per event sent, counting the backlog served after the phase: on a machine shared with other work, CPU per
event varies far less than latency and rate. After each phase the bench waits until the
server has served what is still queued (requests the client gave up on are still handled) and
shows how long that took. At the end it compares the STOPs sent, acknowledged and recorded.

The same load then goes to a minimal pywa bot (Flask integration, app secret checked, STOP
recorded in SQLite, nothing replied) under the same gunicorn settings, from its own virtualenv
($PYWA_VENV, default .venv-pywa in the repository; created by a full run when missing, never by --quick).

Targets: p99 < 50 ms at 320 events/s; >= 1,000 events/s sustained. It is a measurement, not a
test: it exits 0 whatever the results, non-zero only on a crash. Run from the repository root:

    python bench/webhook_load.py                  # 30 s open loop, 20 s closed loop, each target
    python bench/webhook_load.py --quick          # 3 s each, for CI
    python bench/webhook_load.py --seconds 60 --concurrency 16
    python bench/webhook_load.py --bsuid-only-share 0   # phone users only, the mix before BSUIDs
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fractions
import hashlib
import hmac
import json
import math
import os
import random
import runpy
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bot.domain.consent import Action, Scope  # noqa: E402
from bot.storage.migrate import upgrade  # noqa: E402
from bot.storage.schema import consent_events  # noqa: E402
from tests.local_services import free_port, fresh_postgres_schema, stop_group, wait_healthy  # noqa: E402

SCHEMA = os.environ.get("BENCH_POSTGRES_SCHEMA", "bench_webhook")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
APP_SECRET = "bench-app-secret"
VERIFY_TOKEN = "bench-verify-token"
PHONE_NUMBER_ID = "106540352242922"
APPLICATION_NAME = "bench_webhook"  # how the bench finds the PostgreSQL backends serving our bot
WORKERS = 2
# Both bots are served as gunicorn.conf.py serves ours (its worker class and threads).
SERVING = runpy.run_path(str(ROOT / "gunicorn.conf.py"))

RATE = 320  # events/s offered in the open loop
P99_TARGET_MS = 50.0
SUSTAINED_TARGET = 1_000  # events/s
REQUEST_TIMEOUT = 30.0  # s; a request not answered by then counts as an error
DRAIN_LIMIT = 300.0  # s to wait at most for a server to serve its backlog after a phase

PAYLOADS = ROOT / "tests" / "fixtures" / "payloads"
# Request mix: fixture body -> weight. batch_mixed.json holds a hello, two STOPs and a status.
MIX = {
    "text_message": 60, "stop_message": 10, "start_message": 5,
    "status_delivered": 9, "status_read": 6, "batch_mixed": 10,
}
STOP_WORDS = {"stop", "रोकें"}
START_WORDS = {"start"}
# A STOP or START comes from a user whose hello was at least this many senders ago (already answered).
SEEN_LAG = 50
PAST_USERS = 100_000  # users the bot served before the bench (with_history)
BSUID_ONLY_SHARE = fractions.Fraction(1, 3)  # of the new users (and the past ones): no phone, a BSUID only

PYWA_VENV = Path(os.environ.get("PYWA_VENV", ROOT / ".venv-pywa"))
PYWA_PACKAGES = ("pywa[flask]==4.5.0", "gunicorn==27.0.1")
PYWA_BOT = '''
"""A minimal pywa bot: checks the signature, records STOPs in SQLite, replies nothing."""
import os
import sqlite3

from flask import Flask
from pywa import WhatsApp, filters, types

app = Flask(__name__)
wa = WhatsApp(
    phone_id=os.environ["WHATSAPP_PHONE_NUMBER_ID"], server=app, webhook_endpoint="/webhook",
    verify_token=os.environ["WHATSAPP_VERIFY_TOKEN"], app_secret=os.environ["WHATSAPP_APP_SECRET"],
)
stops = sqlite3.connect(os.environ["STOPS_DB"], isolation_level=None, check_same_thread=False)  # threaded workers
stops.execute("PRAGMA journal_mode=WAL")
stops.execute("PRAGMA busy_timeout=10000")
stops.execute("CREATE TABLE IF NOT EXISTS stops (message_id TEXT PRIMARY KEY, wa_id TEXT NOT NULL)")  # wa_id or BSUID


@app.get("/healthz")
def healthz():
    return "ok"


@wa.on_message(filters.text & filters.matches(*STOP_WORDS, ignore_case=True))
def stop(_: WhatsApp, message: types.Message) -> None:
    user = message.from_user
    stops.execute("INSERT OR IGNORE INTO stops VALUES (?, ?)", (message.id, user.wa_id or user.bsuid))  # a username user has no wa_id
'''.replace("*STOP_WORDS", ", ".join(map(repr, sorted(STOP_WORDS))))  # the words the traffic says STOP with


# -- the traffic ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Request:
    body: bytes
    signature: str
    events: int
    stops: int


def bsuid_only(index: int, share: fractions.Fraction) -> bool:
    """Whether the user numbered `index` is a BSUID-only one: exactly `share` of any run of users."""
    return (index + 1) * share.numerator // share.denominator > index * share.numerator // share.denominator


def is_bsuid(identifier: str) -> bool:
    return not identifier[:1].isdigit()


def contact_of(identifier: str) -> dict:
    """A change's contacts entry for a user, as Meta writes it for a phone user (wa_id and
    user_id) or a username user (user_id and username, no wa_id)."""
    if is_bsuid(identifier):
        return {"profile": {"name": "Bench User", "username": f"bench.user{identifier[-8:]}"}, "user_id": identifier}
    return {"profile": {"name": "Bench User"}, "wa_id": identifier, "user_id": f"US.{identifier}"}


class Traffic:
    """An endless, seeded mix of signed webhook bodies; `tag` keeps ids apart between phases,
    `bsuid_only_share` is the share of new users known by a BSUID only."""

    def __init__(self, tag: int, seed: int, bsuid_only_share: fractions.Fraction = BSUID_ONLY_SHARE):
        self.tag = tag
        self.bsuid_only_share = bsuid_only_share
        self.random = random.Random(seed)
        self.templates = {name: (PAYLOADS / f"{name}.json").read_text(encoding="utf-8") for name in MIX}
        self.names, self.weights = list(MIX), list(MIX.values())
        self.serial = 0
        self.greeted: list[str] = []
        self.stopped: list[str] = []

    def next(self) -> Request:
        body = json.loads(self.templates[self.random.choices(self.names, self.weights)[0]])
        now = str(int(time.time()))
        events = stops = 0
        for entry in body["entry"]:
            for change in entry["changes"]:
                value = change["value"]
                people = []
                for message in value.get("messages", []):
                    word = message["text"]["body"].casefold()
                    sender = self._sender(word)
                    del message["from"]
                    message.update({"from_user_id" if is_bsuid(sender) else "from": sender, "id": self._id("in"), "timestamp": now})
                    people.append(sender)
                    stops += word in STOP_WORDS
                for status in value.get("statuses", []):
                    recipient = self._seen(self.greeted)
                    del status["recipient_id"]
                    status.update({
                        "id": self._id("out"), "recipient_user_id" if is_bsuid(recipient) else "recipient_id": recipient, "timestamp": now,
                    })
                    people.append(recipient)
                value["contacts"] = [contact_of(identifier) for identifier in dict.fromkeys(people)]
                events += len(value.get("messages", [])) + len(value.get("statuses", []))
        raw = json.dumps(body, ensure_ascii=False).encode()
        return Request(raw, sign(raw), events, stops)

    def _id(self, direction: str) -> str:
        self.serial += 1
        return f"wamid.bench-{direction}-{self.tag}-{self.serial}"

    def _sender(self, word: str) -> str:
        """STOP from a user seen before, START from one who stopped, anything else from a new user."""
        if word in STOP_WORDS and len(self.greeted) > SEEN_LAG:
            self.stopped.append(self._seen(self.greeted))
            return self.stopped[-1]
        if word in START_WORDS and len(self.stopped) > SEEN_LAG:
            return self._seen(self.stopped)
        index = len(self.greeted)
        self.greeted.append(f"US.{self.tag}{index:019d}" if bsuid_only(index, self.bsuid_only_share) else f"1555{self.tag}{index:06d}")
        return self.greeted[-1]

    def _seen(self, users: list[str]) -> str:
        if len(users) <= SEEN_LAG:
            return "15550000000"
        return users[self.random.randrange(len(users) - SEEN_LAG)]


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()


# -- the load generator (runs in its own process) ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
    port: int
    tag: int
    seconds: float
    rate: float | None  # events/s, open loop; None: closed loop
    concurrency: int
    bsuid_only_share: fractions.Fraction = BSUID_ONLY_SHARE


@dataclasses.dataclass(frozen=True)
class PhaseResult:
    seconds: float
    events: int
    events_sent: int
    stops_sent: int
    stops_acked: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    client_cpu: float  # the load generator's CPU, in cores

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds


@dataclasses.dataclass(frozen=True)
class Outcome:
    request: Request
    status: str  # "200", another HTTP status, "timeout", or the name of the connection error
    latency: float


def run_phase(spec: PhaseSpec) -> PhaseResult:
    return asyncio.run(_phase(spec))


async def _phase(spec: PhaseSpec) -> PhaseResult:
    traffic = Traffic(spec.tag, seed=spec.tag, bsuid_only_share=spec.bsuid_only_share)
    loop = asyncio.get_running_loop()
    start, cpu = loop.time(), time.process_time()
    if spec.rate is None:
        outcomes = await _closed_loop(spec, traffic, start + spec.seconds)
    else:
        outcomes = await _open_loop(spec, traffic, start, spec.rate)
    return summarise(outcomes, loop.time() - start, time.process_time() - cpu)


async def _open_loop(spec: PhaseSpec, traffic: Traffic, start: float, rate: float) -> list[Outcome]:
    loop = asyncio.get_running_loop()
    tasks, due = [], 0.0
    while due < spec.seconds:
        request = traffic.next()
        await asyncio.sleep(max(0.0, start + due - loop.time()))
        tasks.append(asyncio.create_task(_timed(spec.port, request, start + due)))
        due += request.events / rate
    return list(await asyncio.gather(*tasks))


async def _closed_loop(spec: PhaseSpec, traffic: Traffic, end: float) -> list[Outcome]:
    loop = asyncio.get_running_loop()
    outcomes: list[Outcome] = []

    async def connection() -> None:
        while loop.time() < end:
            outcomes.append(await _timed(spec.port, traffic.next(), loop.time()))

    await asyncio.gather(*(connection() for _ in range(spec.concurrency)))
    return outcomes


async def _timed(port: int, request: Request, since: float) -> Outcome:
    try:
        status = await asyncio.wait_for(_post(port, request), REQUEST_TIMEOUT)
    except TimeoutError:
        status = "timeout"
    except OSError as error:
        status = type(error).__name__
    return Outcome(request, status, asyncio.get_running_loop().time() - since)


async def _post(port: int, request: Request) -> str:
    """One POST /webhook on a new connection; the status code once the server has closed it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = (
            f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(request.body)}\r\nX-Hub-Signature-256: {request.signature}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + request.body)
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()
    finally:
        writer.close()
    return status_line.split()[1].decode() if status_line.startswith(b"HTTP/") else "no HTTP answer"


def summarise(outcomes: list[Outcome], seconds: float, cpu_seconds: float) -> PhaseResult:
    acked = [o for o in outcomes if o.status == "200"]
    latencies = sorted(o.latency * 1000 for o in acked)
    errors: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.status != "200":
            errors[outcome.status] = errors.get(outcome.status, 0) + 1
    return PhaseResult(
        seconds=seconds,
        events=sum(o.request.events for o in acked),
        events_sent=sum(o.request.events for o in outcomes),
        stops_sent=sum(o.request.stops for o in outcomes),
        stops_acked=sum(o.request.stops for o in acked),
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        max_ms=latencies[-1] if latencies else math.nan,
        errors=errors,
        client_cpu=cpu_seconds / seconds,
    )


def percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# -- the servers ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Durations:
    warmup: float
    open_loop: float
    closed_loop: float


@dataclasses.dataclass(frozen=True)
class Measurement:
    open_loop: PhaseResult
    closed_loop: PhaseResult
    drained: dict[str, float]  # phase -> seconds the server took to answer what the client gave up on
    server_cpu_ms: dict[str, float]  # phase -> the server's CPU ms per event sent (all are served, 200 or not)
    database_cpu_ms: dict[str, float | None]  # phase -> PostgreSQL's, for the bot that uses it
    stops_sent: int
    stops_acked: int
    stops_recorded: int


@dataclasses.dataclass(frozen=True)
class Server:
    port: int
    pid: int  # gunicorn's master

    def cpu_seconds(self) -> float:
        """CPU used so far by the master and its workers (Linux /proc)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return sum(process_cpu(int(pid)) for pid in [str(self.pid), *children])


def process_cpu(pid: int) -> float:
    """CPU seconds a process has used (Linux /proc); 0 for one that just exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@contextmanager
def gunicorn(python: Path, app: str, cwd: Path, env: dict[str, str], log: Path, worker_class: str = SERVING["worker_class"]) -> Iterator[Server]:
    """Serve `app` with gunicorn in its own session, with our web worker unless told another;
    yield it once /healthz answers 200."""
    port = free_port()
    # No control socket: its default path is one per host, shared with any other gunicorn running there.
    command = [
        str(python), "-m", "gunicorn", app, "--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS), "--no-control-socket",
        "--worker-class", worker_class, "--threads", str(SERVING["threads"]),
    ]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_healthy(process, port, log)
        yield Server(port, process.pid)
    finally:
        stop_group(process)


def wait_drained(port: int) -> float:
    """Seconds until /healthz answers within 0.1 s: requests the client gave up on may still be queued."""
    start = time.monotonic()
    while time.monotonic() - start < DRAIN_LIMIT:
        asked = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=DRAIN_LIMIT) as answer:
                answer.read()
        except OSError:
            time.sleep(0.1)
            continue
        if time.monotonic() - asked < 0.1:
            break
    return time.monotonic() - start


def measure(
    pool: ProcessPoolExecutor, server: Server, durations: Durations, concurrency: int, share: fractions.Fraction,
    stops_recorded: Callable[[], int], database_cpu: Callable[[], float] | None = None,
) -> Measurement:
    """Warm-up, open loop, closed loop, each followed by waiting until the server has caught up.
    `share`: of the new users, those known by a BSUID only.
    `database_cpu`: CPU seconds used so far by a database server's processes serving the bot."""
    port = server.port
    specs = {
        "warm-up": PhaseSpec(port, tag=1, seconds=durations.warmup, rate=None, concurrency=WORKERS, bsuid_only_share=share),
        "open loop": PhaseSpec(port, tag=2, seconds=durations.open_loop, rate=RATE, concurrency=0, bsuid_only_share=share),
        "closed loop": PhaseSpec(
            port, tag=3, seconds=durations.closed_loop, rate=None, concurrency=concurrency, bsuid_only_share=share
        ),
    }
    results, drained, cpu_ms, database_ms = {}, {}, {}, {}
    for name, spec in specs.items():
        cpu, database = server.cpu_seconds(), database_cpu() if database_cpu else 0.0
        results[name] = pool.submit(run_phase, spec).result()
        drained[name] = wait_drained(port)
        sent = max(1, results[name].events_sent)
        cpu_ms[name] = (server.cpu_seconds() - cpu) * 1000 / sent
        database_ms[name] = (database_cpu() - database) * 1000 / sent if database_cpu else None
    return Measurement(
        results["open loop"], results["closed loop"], drained, cpu_ms, database_ms,
        stops_sent=sum(r.stops_sent for r in results.values()),
        stops_acked=sum(r.stops_acked for r in results.values()),
        stops_recorded=stops_recorded(),
    )


def bench_ours(pool: ProcessPoolExecutor, durations: Durations, concurrency: int, share: fractions.Fraction, logs: Path) -> Measurement:
    database_url = reset_stores(share)
    env = {
        "DATABASE_URL": f"{database_url}&application_name={APPLICATION_NAME}", "REDIS_URL": REDIS_URL, "WHATSAPP_APP_SECRET": APP_SECRET,
        "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN, "WHATSAPP_TOKEN": "bench-token",
        "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID, "BUSINESS_NAME": "Bench Bakery",
    }
    with gunicorn(Path(sys.executable), "wsgi:app", ROOT, env, logs / "ours.log") as server:
        return measure(
            pool, server, durations, concurrency, share, lambda: ledger_stops(database_url), lambda: postgres_cpu(database_url)
        )


def postgres_cpu(database_url: str) -> float:
    """CPU seconds used so far by the PostgreSQL backends serving the bot (Linux /proc; the server runs here)."""
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        query = sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name")
        pids = conn.execute(query, {"name": APPLICATION_NAME}).scalars().all()
    engine.dispose()
    return sum(process_cpu(pid) for pid in pids)


def reset_stores(share: fractions.Fraction) -> str:
    """Empty the bench's PostgreSQL schema and Redis database, then give the bot a history
    (`with_history`, `share` of it BSUID-only people); return the database URL."""
    database_url = fresh_postgres_schema(SCHEMA)
    connection = redis.Redis.from_url(REDIS_URL)
    connection.flushdb()
    connection.close()
    with_history(database_url, PAST_USERS, share)
    return database_url


def with_history(database_url: str, users: int, share: fractions.Fraction) -> None:
    """Tables as after some days of service: `users` earlier people, each with a session opened
    and the opt-out notice given in the ledger, a delivered welcome and a contact row, then the
    planner's statistics as autovacuum keeps them. `share` of them are known by a BSUID only
    (`US.7...`); the others by a phone (1777...) linked to a BSUID (`US.1777...`), as the bot
    links the two that a phone user's webhooks carry, with its `identity_linked` event. An empty
    table with none makes PostgreSQL scan where a bot in service uses its indexes, and skews its
    CPU per event. Chain hashes are filler: the bench does not verify the chain."""
    engine = sa.create_engine(database_url)
    upgrade(engine)
    day_ago = "now() - interval '1 day'"
    bsuid_only_sql = f"((i + 1) * {share.numerator} / {share.denominator} > i * {share.numerator} / {share.denominator})"
    phone = "'1777' || lpad(i::text, 7, '0')"
    identifier = f"CASE WHEN {bsuid_only_sql} THEN 'US.7' || lpad(i::text, 19, '0') ELSE {phone} END"
    person = "md5('past-' || i)::uuid::text"
    with engine.begin() as conn:
        for statement in (
            f"CREATE TEMPORARY TABLE past AS SELECT i, {identifier} AS identifier, {phone} AS phone, {person} AS person_id,"
            f" {bsuid_only_sql} AS bsuid_only FROM generate_series(1, {users}) i",
            f"INSERT INTO identities (identifier, person_id, kind, linked_at) SELECT identifier, person_id,"
            f" CASE WHEN bsuid_only THEN 'user_id' ELSE 'phone' END, {day_ago} FROM past",
            f"INSERT INTO identities (identifier, person_id, kind, linked_at) SELECT 'US.' || phone, person_id, 'user_id', {day_ago}"
            " FROM past WHERE NOT bsuid_only",
            f"INSERT INTO contacts (person_id, last_inbound_at) SELECT person_id, {day_ago} FROM past",
            # k: 0 the implicit consent, 1 the notice (both under the identifier the person wrote by), 2 a phone person's link of their BSUID, first
            "INSERT INTO consent_events (seq, event_id, identifier, person_id, action, scope, basis, channel, evidence, source_ref,"
            " occurred_at, recorded_at, recorded_by, prev_hash, hash, hash_version)"
            " SELECT row_number() OVER (ORDER BY i, k = 2 DESC, k), gen_random_uuid(), CASE WHEN k = 2 THEN 'US.' || phone ELSE identifier END,"
            " person_id, (ARRAY['implicit', 'opt_out_notice_given', 'identity_linked'])[k + 1], 'all',"
            " (ARRAY['implicit', NULL, NULL])[k + 1], (ARRAY['whatsapp_session', 'whatsapp_session', 'whatsapp_identity'])[k + 1],"
            " CASE WHEN k = 2 THEN '{\"payload_id\":\"wamid.past-' || i || '\",\"seen_with\":[\"' || phone || '\"]}'"
            " ELSE '{\"message_id\":\"wamid.past-' || i || '\"}' END,"
            " (ARRAY['implicit:', 'notice:', 'identity_linked:'])[k + 1] || 'wamid.past-' || i,"
            f" {day_ago}, {day_ago}, 'webhook', repeat('0', 64), md5(i::text || k) || md5(k || i::text), 3"
            " FROM past, generate_series(0, 2) k WHERE k < 2 OR NOT bsuid_only",
            "UPDATE ledger_head SET seq = (SELECT max(seq) FROM consent_events), hash = repeat('0', 64)",
            "INSERT INTO outbound_messages (id, idempotency_key, recipient, person_id, sent_to, kind, content, queue, state,"
            " meta_message_id, attempts, requested_by, created_at, updated_at, sent_at)"
            " SELECT gen_random_uuid(), 'welcome:wamid.past-' || i, identifier, person_id, identifier, 'free_form',"
            f" '{{\"text\": \"Welcome\"}}', 'replies', 'delivered', 'wamid.out-past-' || i, 1, 'webhook', {day_ago}, {day_ago}, {day_ago}"
            " FROM past",
            "DROP TABLE past",
            "ANALYZE",
        ):
            conn.exec_driver_sql(statement)
    engine.dispose()


def ledger_stops(database_url: str) -> int:
    """Opt-outs of everything by keyword: one per STOP message the bot recorded."""
    engine = sa.create_engine(database_url)
    query = sa.select(sa.func.count()).where(consent_events.c.action == Action.OPT_OUT.value, consent_events.c.scope == Scope.ALL.value)
    with engine.connect() as conn:
        count = conn.execute(query).scalar_one()
    engine.dispose()
    return count


def pywa_version(install: bool) -> str | None:
    """pywa's version in its virtualenv, installing it there first when allowed and missing."""
    python = PYWA_VENV / "bin" / "python"
    probe = [str(python), "-c", "import flask, gunicorn, pywa; print(pywa.__version__)"]
    if python.exists() and (found := subprocess.run(probe, capture_output=True, text=True)).returncode == 0:
        return found.stdout.strip()
    if not install:
        return None
    print(f"installing {' '.join(PYWA_PACKAGES)} into {PYWA_VENV} ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PYWA_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PYWA_PACKAGES], check=True)
        return subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    except subprocess.CalledProcessError as failure:
        print(f"pywa: installing failed ({failure})")
        return None


def bench_pywa(pool: ProcessPoolExecutor, durations: Durations, concurrency: int, share: fractions.Fraction, logs: Path) -> Measurement:
    (logs / "pywa_bot.py").write_text(PYWA_BOT, encoding="utf-8")
    stops_db = logs / "pywa-stops.db"
    env = {
        "WHATSAPP_APP_SECRET": APP_SECRET, "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
        "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID, "STOPS_DB": str(stops_db),
    }

    def recorded() -> int:
        with sqlite3.connect(stops_db) as conn:
            return conn.execute("SELECT count(*) FROM stops").fetchone()[0]

    # gunicorn's threaded worker: ours (asgi.py) is not in pywa's virtualenv, and a plain WSGI bot is served so.
    with gunicorn(PYWA_VENV / "bin" / "python", "pywa_bot:app", logs, env, logs / "pywa.log", worker_class="gthread") as server:
        return measure(pool, server, durations, concurrency, share, recorded)


# -- the report -------------------------------------------------------------------------------


def table(columns: dict[str, Measurement], durations: Durations, concurrency: int) -> str:
    lines = [f"{'':<36}" + "".join(f"{name:>14}" for name in columns)]

    def row(label: str, cell: Callable[[Measurement], str]) -> None:
        lines.append(f"{label:<36}" + "".join(f"{cell(m):>14}" for m in columns.values()))

    for title, name in (
        (f"open loop, {RATE} events/s offered, {durations.open_loop:g} s", "open loop"),
        (f"closed loop, {concurrency} connections, {durations.closed_loop:g} s", "closed loop"),
    ):
        phase = name.replace(" ", "_")
        lines.append(title)
        row("  events/s acknowledged", lambda m: f"{getattr(m, phase).events_per_second:.0f}")
        row("  p50 ms", lambda m: f"{getattr(m, phase).p50_ms:.1f}")
        row("  p99 ms", lambda m: f"{getattr(m, phase).p99_ms:.1f}")
        row("  max ms", lambda m: f"{getattr(m, phase).max_ms:.1f}")
        row("  errors (no 200)", lambda m: str(sum(getattr(m, phase).errors.values())))
        row("  load generator CPU, cores", lambda m: f"{getattr(m, phase).client_cpu:.2f}")
        row("  server CPU ms per event", lambda m: f"{m.server_cpu_ms[name]:.2f}")
        row("  PostgreSQL CPU ms per event", lambda m: "-" if m.database_cpu_ms[name] is None else f"{m.database_cpu_ms[name]:.2f}")
        row("  s until the backlog was served", lambda m: f"{m.drained[name]:.1f}")
    lines.append("STOPs, all phases")
    row("  sent", lambda m: str(m.stops_sent))
    row("  acknowledged with 200", lambda m: str(m.stops_acked))
    row("  recorded by the bot", lambda m: str(m.stops_recorded))
    for column, m in columns.items():
        for name, result in (("open loop", m.open_loop), ("closed loop", m.closed_loop)):
            if result.errors:
                kinds = ", ".join(f"{n} {status}" for status, n in sorted(result.errors.items()))
                lines.append(f"errors, {column}, {name}: {kinds}")
    return "\n".join(lines)


def verdicts(ours: Measurement) -> str:
    def verdict(met: bool, phase: PhaseResult) -> str:
        errors = sum(phase.errors.values())
        return ("PASS" if met and not errors else "FAIL") + (f" ({errors} requests without a 200)" if errors else "")

    p99 = ours.open_loop.p99_ms
    sustained = ours.closed_loop.events_per_second
    return "\n".join([
        f"target p99 < {P99_TARGET_MS:.0f} ms at {RATE} events/s: {p99:.1f} ms: {verdict(p99 < P99_TARGET_MS, ours.open_loop)}",
        f"target >= {SUSTAINED_TARGET:,} events/s sustained: {sustained:.0f} events/s: "
        f"{verdict(sustained >= SUSTAINED_TARGET, ours.closed_loop)}",
    ])


def share_of_users(text: str) -> fractions.Fraction:
    """A share written as 1/3, 0.25 or 0."""
    try:
        share = fractions.Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r}") from None
    if not 0 <= share <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return share.limit_denominator(1000)


def main() -> None:
    parser = argparse.ArgumentParser(description="Load on POST /webhook: our bot and a minimal pywa bot under gunicorn.")
    parser.add_argument("--quick", action="store_true", help="3 s phases; skips pywa unless its virtualenv exists (CI)")
    parser.add_argument("--seconds", type=float, default=30, help="open-loop seconds; the closed loop runs 2/3 of it")
    parser.add_argument("--concurrency", type=int, default=32, help="connections in the closed loop")
    parser.add_argument(
        "--bsuid-only-share", type=share_of_users, default=BSUID_ONLY_SHARE, metavar="FRACTION",
        help=f"of the new and the past users, those known by a BSUID only (default {BSUID_ONLY_SHARE}; 0: phone users only, as before)",
    )
    options = parser.parse_args()
    share = options.bsuid_only_share
    durations = Durations(2, 3, 3) if options.quick else Durations(2, options.seconds, options.seconds * 2 / 3)
    logs = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    print(
        f"gunicorn, {WORKERS} {SERVING['worker_class']} workers with {SERVING['threads']} threads; open loop {durations.open_loop:g} s at {RATE} events/s, closed loop "
        f"{durations.closed_loop:g} s with {options.concurrency} connections; {share} of users BSUID-only; logs in {logs}", flush=True,
    )
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        columns = {"ours": bench_ours(pool, durations, options.concurrency, share, logs)}
        version = pywa_version(install=not options.quick)
        if version is None:
            reason = " (--quick never installs it; a full run does)" if options.quick else ""
            print(f"pywa: skipped, no virtualenv with pywa at {PYWA_VENV}{reason}")
        else:
            try:
                columns[f"pywa {version}"] = bench_pywa(pool, durations, options.concurrency, share, logs)
            except RuntimeError as failure:
                print(f"pywa: could not be served, so no comparison: {failure}")
    print(table(columns, durations, options.concurrency))
    print(verdicts(columns["ours"]))


if __name__ == "__main__":
    main()
