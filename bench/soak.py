"""Soak: the whole bot under mixed webhook traffic, campaigns and faults, then end-state checks.

What it proves: that under sustained, messy traffic, with its stores and processes failing
underneath it, the bot loses no consent event, sends nothing business-initiated to a user who
opted out, has each effect once, keeps its ledger chain intact, does not grow without bound and
never logs a whole phone number. It is a test, not a measurement: every check prints PASS or
FAIL (WARN for memory growth, INFO for what is only reported) and the exit code is 1 on any FAIL.

What runs, all on this host and all of it the soak's own (the machine's shared PostgreSQL and
Redis are never touched): a PostgreSQL instance (initdb into a temporary directory, run as the
`postgres` user, so run the soak as root), a `redis-server` without persistence, the Graph API
imitation (sandbox/graph_imitation.py, in this process: 150 ms per call, 130429 above
SEND_RATE_LIMIT per second, every request recorded), gunicorn as the Procfile runs it (one
master, 2 threaded workers as gunicorn.conf.py sets them, access log on) and 2 `python -m bot.outbound.worker` processes. Every process's
output goes to bench/out/soak/processes.log (PostgreSQL's to bench/out/soak/postgres.log).

The traffic comes from a load generator in its own process: signed POST /webhook bodies at a
fixed rate of events (messages plus statuses) - new users saying hello, known users chatting,
STOP and START flips (also in Hindi and Spanish), HELP, possible opt-outs, delivery statuses for
messages the imitation really accepted, batches of several entries and messages, and
redeliveries of earlier bodies (sometimes posted twice at the same moment). A body answered
anything but 200 (503, a dropped connection, a timeout) is retried with backoff until it gets a
200, as Meta does; only a 200 counts as acknowledged. A user never has two STOP/START messages
unacknowledged at once, so the generator's independent count knows each user's last
consent-affecting message and when it was acknowledged. Meanwhile campaigns (utility and
marketing templates, staff API) go to users opted in through `POST /api/v1/consents`, who also
take part in the STOP/START flips. CAMPAIGN_MAX_OPT_OUT_RATE is set to 100%: the flips are far
above any real opt-out rate and would pause every campaign, while the point here is consent at
send time, not R11.

Faults (`--faults`, on by default): the imitation answering 5xx, hanging past the client's
timeout, and answering 130429 for a while; Redis killed and restarted (empty: queued jobs and
pacing state are gone); PostgreSQL stopped in immediate mode (a crash) and started; a worker
SIGKILLed and started again; a gunicorn worker SIGKILLed (its master starts another) and the
gunicorn master SIGKILLed (the soak starts gunicorn again). --quick injects the cheap ones.

After the traffic stops and the outbox drains (bounded), the checks: every acknowledged STOP is
in the ledger; every user's final state is what the independent count expects; no template and
no welcome reached the imitation while its recipient was opted out (from the STOP's 200 to the
next opt-in the ledger holds; STOP confirmations, HELP answers and replies are allowed, R10);
one ledger event per source reference and the expected counts of them; one STOP confirmation
per STOP; no campaign message twice, except a send in flight when its worker was SIGKILLed
(reported apart: the outbox is at-least-once by design); webhook answers only 200 or 503;
`flask consent verify`; RSS of each web and worker process at start and end (WARN above +50%);
no whole wa_id the generator used in any bot process's output.

Run from the repository root, as root:

    .venv/bin/python bench/soak.py                      # 10 minutes at 300 events/s, faults on
    .venv/bin/python bench/soak.py --quick              # 30 s of traffic at 60 events/s, cheap faults (CI)
    .venv/bin/python bench/soak.py --minutes 3 --rate 200 --no-faults
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import multiprocessing
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench.send_throughput import final_states, final_states_summary  # noqa: E402
from bench.webhook_load import APP_SECRET, PHONE_NUMBER_ID, REQUEST_TIMEOUT, VERIFY_TOKEN, Request, _post, percentile, sign, wait_healthy  # noqa: E402
from bot import create_app  # noqa: E402
from bot.domain.identity import mask  # noqa: E402
from bot.domain.replies import Reply  # noqa: E402
from bot.services import services_of  # noqa: E402
from bot.storage.schema import consent_events, outbound_messages  # noqa: E402
from devstack.processes import Child, Supervisor  # noqa: E402
from sandbox.graph_imitation import GraphImitation, Received  # noqa: E402
from tests.local_services import free_port, migrated  # noqa: E402

OUT = ROOT / "bench" / "out" / "soak"
ADMIN_TOKEN = "soak-admin-token"
BUSINESS = "Soak Bakery"
# The traffic asks for about 220 replies a second (most bodies are new users saying hello) on
# top of the campaigns: at the default 80/s the outbox only grows, and nothing can be checked
# at rest. A number upgraded to 1,000/s keeps up, so the end state is final.
SEND_RATE_LIMIT = 1000
GRAPH_LATENCY = 0.15
NEW_USER_PREFIX = "1557"  # + 7 digits: new users saying hello
CAMPAIGN_USER_PREFIX = "1558"  # + 7 digits: users opted in through the staff API
WA_ID_LENGTH = 11

# -- the traffic (runs in the load generator's own process) -----------------------------------

HELLOS = ("hello", "Hi there", "good morning", "do you deliver on sundays?")
STOP_WORDS = ("STOP", "stop", " Stop! ", "ＳＴＯＰ", "UNSUBSCRIBE", "रोकें", "PARAR")
START_WORDS = ("START", "start", "UNSTOP", "COMENZAR")
HELP_WORDS = ("HELP", "help?", "AYUDA")
POSSIBLE_OPT_OUT = "why do you keep messaging me?"  # genuinely ambiguous (keywords.yml sentences)
# Body kinds -> weight. A batch holds two entries, several messages and maybe statuses.
BODIES = {"hello": 40, "chat": 8, "stop": 9, "start": 7, "help": 5, "possible": 1, "status": 12, "batch": 12, "redelivery": 6}
BATCH_MESSAGES = {"hello": 4, "chat": 2, "stop": 2, "start": 2, "help": 1}
CONCURRENT_REDELIVERY = 0.03  # share of new bodies also posted a second time at once
CAMPAIGN_STOPS = 0.35  # share of STOPs that come from campaign recipients
STATUS_STAGES = ("sent", "delivered", "read")
MAX_CONNECTIONS = 64  # the generator's concurrent POSTs, retries included
MAX_BACKLOG = 2000  # bodies without a 200 yet; beyond it the generator waits (offering less than the rate)
RETRY_FIRST, RETRY_MAX = 0.5, 8.0  # seconds between retries of a body not answered 200


@dataclasses.dataclass(frozen=True)
class Plan:
    port: int
    seconds: float
    rate: float  # events/s
    seed: int
    campaign_users: tuple[str, ...]
    give_up: float  # seconds after the traffic stops to keep retrying unacknowledged bodies


@dataclasses.dataclass
class Said:
    """One STOP or START: the independent count of what each user last said about consent."""

    wa_id: str
    message_id: str
    action: str  # the ledger action it must become: opt_out or opt_in
    sent_at: float
    acked_at: float | None = None  # time.time() of the first 200 for a body holding it


@dataclasses.dataclass
class Body:
    request: Request
    saids: list[Said]
    writers: list[str]  # users with a message in it
    new_users: list[str]
    acked_at: float | None = None


@dataclasses.dataclass
class TrafficResult:
    seconds: float  # of sending new bodies
    held_back: float  # seconds the generator waited because MAX_BACKLOG bodies had no 200 yet
    acked_by: float  # seconds from the start until the last body got its first 200
    bodies: int
    events: int
    bodies_acked: int
    events_acked: int
    redeliveries: int
    redeliveries_acked: int
    answers: dict[str, int]  # every answer to every attempt: "200", "503", "ConnectionRefusedError", ...
    p50_ms: float  # first attempt to 200, retries included
    p99_ms: float
    saids: list[Said]
    wrote: list[str]  # users with a message in an acknowledged body
    users: list[str]  # every wa_id the traffic used
    never_acked: int  # bodies still without a 200 when the generator gave up


class Generator:
    """Signed webhook bodies at a fixed event rate, each retried until 200, and the independent count."""

    def __init__(self, plan: Plan, sent: multiprocessing.Queue):
        self.plan = plan
        self.sent = sent  # (meta message id, recipient) of sends the imitation accepted, from the soak
        self.random = random.Random(plan.seed)
        self.campaign_users = list(plan.campaign_users)
        self.known: list[str] = list(plan.campaign_users)  # users the bot may know: they STOP, chat, ask
        self.stopped: list[str] = []  # lazily pruned: a user is stopped while in stopped_set
        self.stopped_set: set[str] = set()
        self.busy: set[str] = set()  # users with a STOP or START not yet acknowledged
        self.saids: list[Said] = []
        self.wrote: set[str] = set()
        self.new_users: list[str] = []
        self.recent: collections.deque[Body] = collections.deque(maxlen=500)
        self.statuses: collections.deque[tuple[str, str, int]] = collections.deque(maxlen=20_000)
        self.answers: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []
        self.serial = 0
        self.last_ack = 0.0
        self.bodies = self.events = self.bodies_acked = self.events_acked = 0
        self.redeliveries = self.redeliveries_acked = 0

    async def run(self) -> TrafficResult:
        loop = asyncio.get_running_loop()
        self.connections = asyncio.Semaphore(MAX_CONNECTIONS)
        tasks: set[asyncio.Task] = set()

        def post(body: Body, redelivery: bool) -> None:
            task = asyncio.create_task(self._deliver(body, redelivery))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        start, due, held_back = loop.time(), 0.0, 0.0
        while due < self.plan.seconds:
            body, redelivery = self._next_body()
            await asyncio.sleep(max(0.0, start + due - loop.time()))
            if self.bodies - self.bodies_acked > MAX_BACKLOG:  # the server is far behind: wait, then go on from now
                waited = loop.time()
                while self.bodies - self.bodies_acked > MAX_BACKLOG:
                    await asyncio.sleep(0.05)
                held_back += loop.time() - waited
                due = max(due, loop.time() - start)
            post(body, redelivery)
            if not redelivery and self.random.random() < CONCURRENT_REDELIVERY:
                post(body, True)
            due += body.request.events / self.plan.rate
        seconds = loop.time() - start
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=self.plan.give_up)
            for task in pending:
                task.cancel()
        return TrafficResult(
            seconds=seconds, held_back=held_back, acked_by=self.last_ack - start, bodies=self.bodies, events=self.events, bodies_acked=self.bodies_acked,
            events_acked=self.events_acked, redeliveries=self.redeliveries, redeliveries_acked=self.redeliveries_acked,
            answers=dict(self.answers), p50_ms=percentile(sorted(self.latencies), 0.5) * 1000,
            p99_ms=percentile(sorted(self.latencies), 0.99) * 1000, saids=self.saids, wrote=sorted(self.wrote),
            users=self.campaign_users + self.new_users, never_acked=self.bodies - self.bodies_acked,
        )

    async def _deliver(self, body: Body, redelivery: bool) -> None:
        """POST until 200, like Meta: 503, a dropped connection or a timeout is retried with backoff."""
        loop = asyncio.get_running_loop()
        first, delay = loop.time(), RETRY_FIRST
        while True:
            async with self.connections:
                try:
                    status = await asyncio.wait_for(_post(self.plan.port, body.request), REQUEST_TIMEOUT)
                except TimeoutError:
                    status = "timeout"
                except OSError as error:
                    status = type(error).__name__
            self.answers[status] += 1
            if status == "200":
                self._acknowledged(body, redelivery, loop.time() - first)
                return
            await asyncio.sleep(delay * self.random.uniform(0.5, 1.5))
            delay = min(delay * 2, RETRY_MAX)

    def _acknowledged(self, body: Body, redelivery: bool, latency: float) -> None:
        self.redeliveries_acked += redelivery
        if body.acked_at is not None:
            return
        body.acked_at = time.time()
        self.last_ack = asyncio.get_running_loop().time()
        self.bodies_acked += 1
        self.events_acked += body.request.events
        if not redelivery:
            self.latencies.append(latency)
        for said in body.saids:
            said.acked_at = body.acked_at
            self.busy.discard(said.wa_id)
        self.wrote.update(body.writers)
        self.known.extend(body.new_users)  # a new user may STOP once the bot has seen their hello

    def _next_body(self) -> tuple[Body, bool]:
        """A new body, or (redelivery) one sent before."""
        kind = self.random.choices(list(BODIES), list(BODIES.values()))[0]
        if kind == "redelivery" and self.recent:
            self.redeliveries += 1
            return self.random.choice(self.recent), True
        now = time.time()
        taken: set[str] = set()
        statuses = [s for s in (self._status(now) for _ in range(self.random.randint(1, 3))) if s] if kind == "status" else []
        if kind == "batch":
            first = [self.random.choices(list(BATCH_MESSAGES), list(BATCH_MESSAGES.values()))[0] for _ in range(self.random.randint(2, 4))]
            entries = [(first, [s for s in (self._status(now) for _ in range(self.random.randint(0, 2))) if s]), (["hello"], [])]
        elif kind == "status" and statuses:
            entries = [([], statuses)]
        else:
            entries = [(["hello" if kind in ("status", "redelivery") else kind], [])]
        saids: list[Said] = []
        writers: list[str] = []
        new: list[str] = []
        built = []
        for kinds, entry_statuses in entries:
            messages = [self._message(k, taken, now, saids, new) for k in kinds]
            writers.extend(m["from"] for m in messages)
            built.append((messages, entry_statuses))
        raw = json.dumps(_envelope(built), ensure_ascii=False).encode()
        events = sum(len(m) + len(s) for m, s in built)
        body = Body(Request(raw, sign(raw), events, sum(s.action == "opt_out" for s in saids)), saids, writers, new)
        self.bodies += 1
        self.events += events
        self.recent.append(body)
        return body, False

    def _message(self, kind: str, taken: set[str], now: float, saids: list[Said], new: list[str]) -> dict:
        """One text message of this kind from a fitting user; a user appears once per body."""
        wa_id, text, action = None, "", None
        if kind == "stop":
            pool = self.campaign_users if self.random.random() < CAMPAIGN_STOPS else self.known
            wa_id, text, action = self._pick(pool, taken, consent=True), self.random.choice(STOP_WORDS), "opt_out"
        elif kind == "start":
            wa_id, text, action = self._pick_stopped(taken), self.random.choice(START_WORDS), "opt_in"
        elif kind in ("chat", "help", "possible"):
            wa_id = self._pick(self.known, taken, consent=False)
            text = {"chat": self.random.choice(HELLOS), "help": self.random.choice(HELP_WORDS), "possible": POSSIBLE_OPT_OUT}[kind]
        if wa_id is None:  # nobody fits (yet): a new user says hello
            wa_id, text, action = f"{NEW_USER_PREFIX}{len(self.new_users):07d}", self.random.choice(HELLOS), None
            self.new_users.append(wa_id)
            new.append(wa_id)
        taken.add(wa_id)
        self.serial += 1
        message_id = f"wamid.soak-{self.serial}"
        if action is not None:
            saids.append(Said(wa_id, message_id, action, now))
            self.saids.append(saids[-1])
            self.busy.add(wa_id)
            if action == "opt_out" and wa_id not in self.stopped_set:
                self.stopped_set.add(wa_id)
                self.stopped.append(wa_id)
            elif action == "opt_in":
                self.stopped_set.discard(wa_id)
        return {"from": wa_id, "id": message_id, "timestamp": str(int(now)), "type": "text", "text": {"body": text}}

    def _pick(self, pool: list[str], taken: set[str], consent: bool) -> str | None:
        for _ in range(8):
            wa_id = pool[self.random.randrange(len(pool))] if pool else None
            if wa_id and wa_id not in taken and not (consent and wa_id in self.busy):
                return wa_id
        return None

    def _pick_stopped(self, taken: set[str]) -> str | None:
        if len(self.stopped) > 2 * len(self.stopped_set) + 100:
            self.stopped = [u for u in self.stopped if u in self.stopped_set]
        for _ in range(8):
            wa_id = self.stopped[self.random.randrange(len(self.stopped))] if self.stopped else None
            if wa_id and wa_id in self.stopped_set and wa_id not in taken and wa_id not in self.busy:
                return wa_id
        return None

    def _status(self, now: float) -> dict | None:
        """A status for a message the imitation accepted; later stages come back later, sometimes skipped."""
        try:
            while True:
                self.statuses.extend((meta_id, to, 0) for meta_id, to in self.sent.get_nowait())
        except queue.Empty:
            pass
        if not self.statuses:
            return None
        meta_id, to, stage = self.statuses.popleft()
        next_stage = stage + self.random.choice((1, 1, 1, 2))
        if next_stage < len(STATUS_STAGES) and self.random.random() < 0.8:
            self.statuses.append((meta_id, to, next_stage))
        return {
            "id": meta_id, "status": STATUS_STAGES[stage], "timestamp": str(int(now)), "recipient_id": to,
            "pricing": {"billable": True, "pricing_model": "PMP", "category": "utility", "type": "regular"},
        }


def _envelope(entries: list[tuple[list[dict], list[dict]]]) -> dict:
    """Meta's notification body: one entry per (messages, statuses), a change for each non-empty list."""
    metadata = {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID}
    body_entries = []
    for messages, statuses in entries:
        changes = []
        if messages:
            contacts = [{"profile": {"name": "Soak User"}, "wa_id": m["from"]} for m in messages]
            changes.append({"field": "messages", "value": {"messaging_product": "whatsapp", "metadata": metadata, "contacts": contacts, "messages": messages}})
        if statuses:
            changes.append({"field": "messages", "value": {"messaging_product": "whatsapp", "metadata": metadata, "statuses": statuses}})
        body_entries.append({"id": "102290129340398", "changes": changes})
    return {"object": "whatsapp_business_account", "entry": body_entries}


def run_traffic(plan: Plan, sent: multiprocessing.Queue, results: multiprocessing.Queue) -> None:
    """The load generator process's entry point."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the soak stops it; a Ctrl-C is the soak's to handle
    results.put(asyncio.run(Generator(plan, sent).run()))


# -- the services ----------------------------------------------------------------------------


class Postgres:
    """A PostgreSQL instance of the soak's own, run as the postgres user from a temporary directory."""

    def __init__(self) -> None:
        self.bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="soak-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.dir), "-A", "trust", "-U", "postgres")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c max_connections=300"
        self._run("pg_ctl", "-D", str(self.dir), "-o", options, "-l", str(self.dir / "log"), "-w", "-t", "60", "start")

    def stop(self, mode: str) -> None:
        """`immediate` is a crash: the next start recovers from the WAL."""
        self._run("pg_ctl", "-D", str(self.dir), "-m", mode, "-w", "stop", check=False)

    def create_database(self, name: str) -> None:
        self._run("createdb", "-h", str(self.dir), "-p", str(self.port), "-U", "postgres", name)

    def remove(self, keep_log: Path) -> None:
        self.stop("immediate")
        if (self.dir / "log").exists():
            shutil.copy(self.dir / "log", keep_log)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        command = ["runuser", "-u", "postgres", "--", str(self.bin / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-500:]}")


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (gunicorn's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Stack:
    """The soak's processes: its Redis, gunicorn and the workers, started, killed and restarted."""

    def __init__(self, supervisor: Supervisor, env: dict[str, str], log: Path, redis_port: int):
        self.supervisor = supervisor
        self.env = env
        self.log = log
        self.redis_port = redis_port
        self.web_port = free_port()
        self.redis: Child | None = None
        self.web: Child | None = None
        self.workers: dict[int, Child] = {}
        self.lock = threading.Lock()  # a fault in progress, or a revival: one at a time
        self.exits: list[tuple[float, str, int]] = []  # (time.time(), name, exit code) of processes that exited by themselves

    def start_redis(self) -> None:
        argv = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]
        self.redis = self.supervisor.start("redis", argv, self.env)
        client = redis.Redis(port=self.redis_port, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the soak's redis-server did not answer within 20 s") from None
                time.sleep(0.05)

    def start_web(self, initial: bool = False) -> None:
        argv = [
            sys.executable, "-m", "gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{self.web_port}", "--workers", "2",
            "--no-control-socket", "--access-logfile", "-",
        ]
        self.web = self.supervisor.start("web", argv, self.env)
        if initial:
            wait_healthy(self.web.process, self.web_port, self.log)
            return
        # Under the generator's retries /healthz waits behind many webhooks: be patient.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.web.process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/healthz", timeout=60) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not serve /healthz again within 180 s (exit code {self.web.process.poll()})")

    def start_worker(self, number: int) -> None:
        self.workers[number] = self.supervisor.start(f"worker{number}", [sys.executable, "-m", "bot.outbound.worker"], self.env)

    def processes(self) -> Iterator[tuple[str, int]]:
        """(role, pid) of every web and worker process running now."""
        if self.web and self.web.process.poll() is None:
            yield "web master", self.web.process.pid
            for pid in children_of(self.web.process.pid):
                yield "web worker", pid
        for number, child in sorted(self.workers.items()):
            if child.process.poll() is None:
                yield f"worker{number}", child.process.pid

    def revive(self) -> None:
        """Start again a web or worker process that exited by itself, as a PaaS would, noting it."""
        with self.lock:
            for number, child in list(self.workers.items()):
                if child.process.poll() is not None:
                    self.exits.append((time.time(), f"worker{number}", child.process.returncode))
                    time.sleep(1)
                    self.start_worker(number)
            if self.web.process.poll() is not None:
                self.exits.append((time.time(), "gunicorn master", self.web.process.returncode))
                self.web.signal_group(signal.SIGKILL)
                self.start_web()

    # -- faults (each holds the lock, so that revive() does not mistake them for crashes) ----

    def kill_worker(self, number: int) -> str:
        with self.lock:
            return self._kill_worker(number)

    def _kill_worker(self, number: int) -> str:
        child = self.workers[number]
        child.process.send_signal(signal.SIGKILL)
        child.process.wait()
        time.sleep(2)
        self.start_worker(number)
        return f"pid {child.process.pid} killed; worker{number} started again as pid {self.workers[number].process.pid} after 2 s"

    def kill_web_worker(self) -> str:
        pids = children_of(self.web.process.pid)
        os.kill(pids[0], signal.SIGKILL)
        return f"gunicorn worker pid {pids[0]} killed; the master starts another"

    def kill_web_master(self) -> str:
        with self.lock:
            return self._kill_web_master()

    def _kill_web_master(self) -> str:
        """SIGKILL the master; its orphaned workers notice and exit (or are killed), then gunicorn starts again."""
        started = time.monotonic()
        old = self.web
        old.process.send_signal(signal.SIGKILL)
        old.process.wait()
        while old.group_alive() and time.monotonic() - started < 10:
            time.sleep(0.1)
        orphans_killed = old.group_alive()
        old.signal_group(signal.SIGKILL)
        self.start_web()
        return (
            f"master pid {old.process.pid} killed; {'orphaned workers killed after 10 s; ' if orphans_killed else ''}"
            f"gunicorn serving again after {time.monotonic() - started:.1f} s"
        )

    def restart_redis(self) -> str:
        started = time.monotonic()
        with self.lock:  # what exits while Redis is down is started again once it is back
            self.redis.process.send_signal(signal.SIGKILL)
            self.redis.process.wait()
            time.sleep(1)
            self.start_redis()
        return f"killed and started again, empty, after {time.monotonic() - started:.1f} s"


# -- watching: statuses for the generator, memory ---------------------------------------------


@dataclasses.dataclass
class Memory:
    role: str
    pid: int
    born: float
    start_kib: int | None = None
    end_kib: int | None = None


class Monitor(threading.Thread):
    """Passes the imitation's accepted sends to the generator (for statuses) and samples RSS."""

    WARM = 10.0  # seconds a new process runs before its start RSS is taken (it loads the app first)

    def __init__(self, imitation: GraphImitation, sent: multiprocessing.Queue, stack: Stack):
        super().__init__(name="soak-monitor", daemon=True)
        self.imitation = imitation
        self.sent = sent
        self.stack = stack
        self.stop = threading.Event()
        self.seen = 0
        self.memory: dict[int, Memory] = {}
        self.measure_from = float("inf")  # start RSS is taken from the traffic's start on

    def run(self) -> None:
        tick = 0
        while not self.stop.wait(0.5):
            tick += 1
            self.stack.revive()
            self.feed()
            if tick % 4 == 0:
                self.sample()

    def feed(self) -> None:
        fresh = self.imitation.requests[self.seen :]
        self.seen += len(fresh)
        accepted = [(r.meta_id, r.to) for r in fresh if r.status == 200 and r.meta_id]
        if accepted:
            self.sent.put(accepted)

    def sample(self) -> None:
        now = time.monotonic()
        for role, pid in list(self.stack.processes()):
            rss = rss_kib(pid)
            if rss is None:
                continue
            memory = self.memory.setdefault(pid, Memory(role, pid, now))
            if memory.start_kib is None and now >= max(self.measure_from, memory.born + self.WARM):
                memory.start_kib = rss
            memory.end_kib = rss


# -- the timeline of campaigns and faults -------------------------------------------------------


@dataclasses.dataclass
class Happening:
    at: float  # seconds since the traffic started
    wall: float  # time.time(), to compare with the imitation's records
    what: str
    outcome: str = ""


class Timeline:
    """Runs campaigns and faults at their times, noting when each really happened."""

    def __init__(self, start: float):
        self.start = start
        self.log: list[Happening] = []

    def run(self, events: list[tuple[float, str, Callable[[], str]]]) -> None:
        for offset, what, action in sorted(events, key=lambda e: e[0]):
            time.sleep(max(0.0, self.start + offset - time.monotonic()))
            happening = Happening(time.monotonic() - self.start, time.time(), what)
            self.log.append(happening)
            print(f"  t={happening.at:6.1f} s  {what}", flush=True)
            try:
                happening.outcome = action()
            except Exception as error:  # a fault that could not be injected is reported, not fatal
                happening.outcome = f"failed: {type(error).__name__}: {error}"
            print(f"             -> {happening.outcome}", flush=True)


# -- the soak ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Check:
    name: str
    verdict: str  # PASS, FAIL, WARN or INFO
    detail: str


class Soak:
    def __init__(self, options: argparse.Namespace):
        self.options = options
        self.quick = options.quick
        self.seconds = 30.0 if self.quick else options.minutes * 60
        self.rate = options.rate if options.rate else (60.0 if self.quick else 300.0)
        self.campaign_size = 300 if self.quick else 3000
        self.kills: list[float] = []  # time.time() of each worker SIGKILL
        self.cap_windows: list[tuple[float, float]] = []  # time.time() spans of the 130429 fault
        self.campaigns: list[dict] = []
        self.staff_answers: collections.Counter[str] = collections.Counter()
        self.checks: list[Check] = []

    # -- setting up ----------------------------------------------------------------------

    def environment(self, database_url: str, redis_url: str, graph_url: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", ""), "LANG": os.environ.get("LANG", "C.UTF-8"), "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": database_url, "REDIS_URL": redis_url, "GRAPH_API_URL": graph_url,
            "WHATSAPP_TOKEN": "soak-token", "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
            "WHATSAPP_APP_SECRET": APP_SECRET, "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
            "ADMIN_API_TOKEN": ADMIN_TOKEN, "BUSINESS_NAME": BUSINESS, "SECRET_KEY": "soak-secret-key",
            "SEND_RATE_LIMIT": str(SEND_RATE_LIMIT), "CAMPAIGN_MAX_OPT_OUT_RATE": "100%",
            "SEND_LEASE_SECONDS": "20" if self.quick else "60", "SWEEP_INTERVAL_SECONDS": "2" if self.quick else "5",
        }

    def staff(self, method: str, path: str, body: dict | None = None, key: str | None = None, limit: float = 120) -> requests.Response:
        """A staff API call, repeated (same Idempotency-Key) while the answer is 503 or the connection fails."""
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **({"Idempotency-Key": key} if key else {})}
        url = f"http://127.0.0.1:{self.stack.web_port}/api/v1{path}"
        deadline, delay = time.monotonic() + limit, 0.2
        while True:
            try:
                answer = requests.request(method, url, json=body, headers=headers, timeout=60)
                self.staff_answers[str(answer.status_code)] += 1
                if answer.status_code != 503:
                    return answer
            except requests.RequestException as error:
                self.staff_answers[type(error).__name__] += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"{method} {path}: no answer but 503 or errors for {limit:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 4.0)

    def opt_in_campaign_users(self) -> tuple[str, ...]:
        users = tuple(f"{CAMPAIGN_USER_PREFIX}{n:07d}" for n in range(self.campaign_size))

        def opt_in(wa_id: str) -> int:
            body = {
                "wa_id": wa_id, "action": "opt_in", "channel": "web", "consent_text": "Yes, send me offers and order updates on WhatsApp",
                "evidence": {"form": "soak-signup", "ip": "192.0.2.1"},
            }
            return self.staff("POST", "/consents", body, key=f"soak-opt-in-{wa_id}").status_code

        with ThreadPoolExecutor(8) as pool:
            answers = collections.Counter(pool.map(opt_in, users))
        if set(answers) != {201}:
            raise RuntimeError(f"opting in the campaign users: answers {dict(answers)}")
        return users

    def post_campaign(self, number: int, category: str) -> str:
        template = {"name": f"soak_campaign_{number}", "language": "en_US", "category": category}
        answer = self.staff("POST", "/campaigns", {"template": template, "recipients": list(self.campaign_users)}, key=f"soak-campaign-{number}")
        result = answer.json()
        self.campaigns.append({"template": template["name"], "category": category, "status": answer.status_code, **result})
        return f"{answer.status_code}: queued {result.get('queued')}, skipped {result.get('skipped')}"

    # -- faults --------------------------------------------------------------------------

    def graph_errors(self, seconds: float) -> str:
        self.imitation.server_errors_until = time.monotonic() + seconds
        return f"the imitation answers 503 for {seconds:g} s"

    def graph_hangs(self, seconds: float) -> str:
        self.imitation.hang_until = time.monotonic() + seconds
        return f"the imitation holds each call {self.imitation.hang_seconds:g} s (past the 15 s read timeout), then 504, for {seconds:g} s"

    def graph_cap(self, cap: int, seconds: float) -> str:
        normal = self.imitation.cap
        self.imitation.cap = cap
        self.cap_windows.append((time.time(), time.time() + seconds))
        threading.Timer(seconds, lambda: setattr(self.imitation, "cap", normal)).start()
        return f"the imitation answers 130429 above {cap}/s for {seconds:g} s"

    def kill_worker(self, number: int) -> str:
        self.kills.append(time.time())
        return self.stack.kill_worker(number)

    def restart_postgres(self) -> str:
        started = time.monotonic()
        with self.stack.lock:  # what exits while PostgreSQL is down is started again once it is back
            self.postgres.stop("immediate")
            time.sleep(1)
            self.postgres.start()
        return f"stopped in immediate mode (a crash) and started again after {time.monotonic() - started:.1f} s"

    def timeline(self) -> list[tuple[float, str, Callable[[], str]]]:
        """Campaigns, and faults while they send; fractions of the run, or seconds in --quick."""
        s = self.seconds
        campaigns = [(0.13, "utility"), (0.6, "marketing")] if self.quick else [(0.03, "utility"), (0.2, "marketing"), (0.4, "utility"), (0.6, "marketing"), (0.8, "utility")]
        events = [(f * s, f"campaign {n} ({category})", lambda n=n, c=category: self.post_campaign(n, c)) for n, (f, category) in enumerate(campaigns, 1)]
        if not self.options.faults:
            return events
        if self.quick:
            faults = [
                (6, "SIGKILL worker1", lambda: self.kill_worker(1)),
                (10, "Graph API 5xx burst", lambda: self.graph_errors(4)),
                (14, "Redis restart", self.stack.restart_redis),
                (20, "PostgreSQL restart", self.restart_postgres),
                (26, "SIGKILL a gunicorn worker", self.stack.kill_web_worker),
            ]
        else:
            faults = [
                (0.06 * s, "Graph API 5xx burst", lambda: self.graph_errors(10)),
                (0.09 * s, "SIGKILL worker1", lambda: self.kill_worker(1)),
                (0.15 * s, "Redis restart", self.stack.restart_redis),
                (0.22 * s, "SIGKILL a gunicorn worker", self.stack.kill_web_worker),
                (0.25 * s, "PostgreSQL restart", self.restart_postgres),
                (0.33 * s, "Graph API timeouts", lambda: self.graph_hangs(20)),
                (0.42 * s, "SIGKILL worker2", lambda: self.kill_worker(2)),
                (0.50 * s, "SIGKILL the gunicorn master", self.stack.kill_web_master),
                (0.62 * s, "Graph API 130429", lambda: self.graph_cap(5, 15)),
                (0.65 * s, "SIGKILL worker1", lambda: self.kill_worker(1)),
                (0.70 * s, "Redis restart", self.stack.restart_redis),
                (0.82 * s, "PostgreSQL restart", self.restart_postgres),
                (0.84 * s, "SIGKILL worker2", lambda: self.kill_worker(2)),
            ]
        return events + faults

    # -- the run -------------------------------------------------------------------------

    def run(self) -> int:
        if OUT.exists():
            shutil.rmtree(OUT)
        OUT.mkdir(parents=True)
        log_path = OUT / "processes.log"
        self.postgres = Postgres()
        log_file = open(log_path, "w", encoding="utf-8")
        supervisor = Supervisor(ROOT, log_file)
        self.imitation = GraphImitation(latency=GRAPH_LATENCY, cap=SEND_RATE_LIMIT).start()
        context = multiprocessing.get_context("spawn")
        sent, results = context.Queue(), context.Queue()
        generator = None
        monitor = None
        try:
            self.postgres.start()
            self.postgres.create_database("soak")
            redis_port = free_port()
            env = self.environment(migrated(self.postgres.url("soak")), f"redis://127.0.0.1:{redis_port}/0", self.imitation.url)
            app = create_app(env)  # after `flask db upgrade`, as a release step runs it
            self.stack = Stack(supervisor, env, log_path, redis_port)
            self.stack.start_redis()
            self.stack.start_web(initial=True)
            for number in (1, 2):
                self.stack.start_worker(number)
            print(
                f"soak: PostgreSQL :{self.postgres.port}, Redis :{redis_port}, gunicorn :{self.stack.web_port} (2 workers), "
                f"2 bot workers, Graph API imitation {self.imitation.url}; logs in {OUT.relative_to(ROOT)}", flush=True,
            )
            started = time.monotonic()
            self.campaign_users = self.opt_in_campaign_users()
            print(f"soak: {len(self.campaign_users)} campaign users opted in through POST /api/v1/consents in {time.monotonic() - started:.1f} s", flush=True)
            monitor = Monitor(self.imitation, sent, self.stack)
            monitor.start()
            monitor.measure_from = time.monotonic()
            plan = Plan(self.stack.web_port, self.seconds, self.rate, 8, self.campaign_users, give_up=60 if self.quick else 180)
            print(f"soak: {self.seconds:g} s of traffic at {self.rate:g} events/s, faults {'on' if self.options.faults else 'off'}", flush=True)
            generator = context.Process(target=run_traffic, args=(plan, sent, results), name="soak-traffic")
            generator.start()
            timeline = Timeline(time.monotonic())
            self.t0, self.happenings = time.time(), timeline.log
            timeline.run(self.timeline())
            traffic = _result(generator, results)
            sent.cancel_join_thread()
            print("soak: traffic done; waiting for the outbox to drain", flush=True)
            services_of(app).ledger.engine.dispose()  # its pooled connections died with the PostgreSQL restarts
            drained, remaining = self.drain(services_of(app).ledger.engine)
            monitor.stop.set()
            monitor.join()
            monitor.sample()
            self.check_all(app, traffic, drained, remaining, monitor)
            self.summary(traffic, timeline, services_of(app).ledger.engine)
        finally:
            if monitor is not None:
                monitor.stop.set()
            if generator is not None and generator.is_alive():
                generator.terminate()
            supervisor.stop(list(supervisor.children), timeout=20, hurry=threading.Event())
            self.imitation.stop()
            self.postgres.remove(OUT / "postgres.log")
            log_file.close()
        self.check_logs(traffic)
        return self.report()

    def drain(self, engine: sa.Engine) -> tuple[float, list[sa.Row]]:
        """Wait (bounded) until no message is queued; return the wait and what is still queued."""
        started = time.monotonic()
        limit = 90 if self.quick else 300
        while time.monotonic() - started < limit:
            if final_states(engine).get("queued", 0) == 0:
                break
            time.sleep(1)
        with engine.connect() as conn:
            remaining = conn.execute(
                sa.select(outbound_messages.c.kind, outbound_messages.c.attempts, outbound_messages.c.not_before, outbound_messages.c.lease_until)
                .where(outbound_messages.c.state == "queued")
            ).all()
        return time.monotonic() - started, remaining

    # -- the checks ----------------------------------------------------------------------

    def add(self, name: str, verdict: str, detail: str) -> None:
        self.checks.append(Check(name, verdict, detail))

    def check_all(self, app, traffic: TrafficResult, drained: float, remaining: list[sa.Row], monitor: Monitor) -> None:
        engine = services_of(app).ledger.engine
        with engine.connect() as conn:
            events = conn.execute(sa.select(consent_events).order_by(consent_events.c.seq)).mappings().all()
            outbound = conn.execute(sa.select(outbound_messages)).mappings().all()
        received = list(self.imitation.requests)
        self.check_exits()
        self.check_drained(drained, remaining)
        self.check_answers(traffic)
        self.check_stops_recorded(traffic, events)
        self.check_final_states(app, traffic)
        self.check_ledger_counts(traffic, events)
        texts = {services_of(app).replies.render(reply, language): reply.value for reply in Reply for language in services_of(app).keywords.languages}
        self.check_opted_out_sends(traffic, events, received, texts)
        self.check_stop_confirmations(events, outbound, received, texts)
        self.check_campaign_duplicates(received)
        self.check_verify()
        self.check_memory(monitor)

    def check_exits(self) -> None:
        exits = self.stack.exits
        detail = "; ".join(f"{name} exited with {code} at {self._when([at])}, started again" for at, name, code in exits)
        self.add("no web or worker process exited by itself", "FAIL" if exits else "PASS", detail or "none did")

    def check_drained(self, drained: float, remaining: list[sa.Row]) -> None:
        if not remaining:
            self.add("outbox drained", "PASS", f"no message queued after {drained:.0f} s")
            return
        now = datetime.now().astimezone()
        overdue = [r for r in remaining if (r.not_before is None or r.not_before < now) and (r.lease_until is None or r.lease_until < now)]
        kinds = collections.Counter(r.kind for r in remaining)
        detail = f"{len(remaining)} still queued after {drained:.0f} s ({dict(kinds)}); {len(overdue)} due and unclaimed (stuck), the others backing off"
        self.add("outbox drained", "FAIL" if overdue else "WARN", detail)

    def check_answers(self, traffic: TrafficResult) -> None:
        unexpected = {k: v for k, v in traffic.answers.items() if k.isdigit() and k not in ("200", "503")}
        detail = ", ".join(f"{k} x{v}" for k, v in sorted(traffic.answers.items()))
        self.add("webhook answers only 200 or 503 (or a dropped connection)", "FAIL" if unexpected else "PASS", detail)
        staff = {k: v for k, v in self.staff_answers.items() if k.isdigit() and k not in ("201", "202", "200", "503")}
        self.add("staff API answers 2xx or 503", "FAIL" if staff else "PASS", ", ".join(f"{k} x{v}" for k, v in sorted(self.staff_answers.items())))
        never = traffic.never_acked
        self.add("every webhook body acknowledged with 200 in the end", "FAIL" if never else "PASS", f"{traffic.bodies_acked}/{traffic.bodies} bodies")

    def check_stops_recorded(self, traffic: TrafficResult, events: list) -> None:
        refs = {e["source_ref"]: e for e in events}
        acked = [s for s in traffic.saids if s.acked_at is not None]
        lost = [s for s in acked if (e := refs.get(f"{s.action}:{s.message_id}")) is None or e["identifier"] != s.wa_id]
        stops = [s for s in acked if s.action == "opt_out"]
        lost_stops = [s for s in lost if s.action == "opt_out"]
        detail = f"{len(stops) - len(lost_stops)}/{len(stops)} acknowledged STOPs and {len(acked) - len(stops) - (len(lost) - len(lost_stops))}/{len(acked) - len(stops)} STARTs in the ledger"
        if lost:
            detail += "; missing: " + ", ".join(f"{s.action} {s.message_id} from {mask(s.wa_id)}" for s in lost[:5])
        self.add("every acknowledged STOP (and START) is in the ledger", "FAIL" if lost else "PASS", detail)
        # Expected per user: the acknowledged STOPs, plus those recorded though never acknowledged (allowed).
        unacked_recorded = [s for s in traffic.saids if s.acked_at is None and s.action == "opt_out" and f"opt_out:{s.message_id}" in refs]
        expected = collections.Counter(s.wa_id for s in stops + unacked_recorded)
        recorded = collections.Counter(e["identifier"] for e in events if e["action"] == "opt_out" and e["channel"] == "whatsapp_keyword")
        differ = sorted(u for u in expected.keys() | recorded.keys() if expected[u] != recorded[u])
        detail = f"{len(expected)} users, {sum(recorded.values())} opt-out events; {len(differ)} users differ"
        if differ:
            detail += ": " + ", ".join(f"{mask(u)} has {recorded[u]}, expected {expected[u]}" for u in differ[:5])
        if unacked_recorded:
            detail += f" ({len(unacked_recorded)} STOPs recorded but never acknowledged)"
        self.add("opt-out events per user match the independent count", "FAIL" if differ else "PASS", detail)

    def check_final_states(self, app, traffic: TrafficResult) -> None:
        expected: dict[str, str] = {u: "opted_in" for u in self.campaign_users}
        expected.update((u, "implicit") for u in traffic.wrote if u not in expected)
        held: dict[str, str] = {}  # per user opted out: what the STOP stopped, which START restores (R8)
        ambiguous = set()
        for said in traffic.saids:  # in sending order, which per user is acknowledging order
            if said.acked_at is None:
                ambiguous.add(said.wa_id)
            now = expected.get(said.wa_id, "implicit")  # a STOP or START is a message too: a session
            if said.action == "opt_out":
                if now != "opted_out":
                    held[said.wa_id] = now
                expected[said.wa_id] = "opted_out"
            else:
                expected[said.wa_id] = held.pop(said.wa_id, now) if now == "opted_out" else now
        users = [u for u in expected if u not in ambiguous]
        states = services_of(app).ledger.states(users)
        wrong = [u for u in users if states[u].state.value != expected[u]]
        tally = collections.Counter(expected[u] for u in users)
        detail = f"{len(users)} users ({', '.join(f'{k} {v}' for k, v in sorted(tally.items()))}); {len(wrong)} wrong"
        if wrong:
            detail += ": " + ", ".join(f"{mask(u)} is {states[u].state.value}, expected {expected[u]}" for u in wrong[:5])
        if ambiguous:
            detail += f"; {len(ambiguous)} users skipped (a STOP/START never acknowledged)"
        self.add("every user's final state matches the independent count", "FAIL" if wrong else "PASS", detail)
        sample = random.Random(1).sample(users, min(20, len(users)))
        api = {u: self.staff("GET", f"/consents/{u}").json().get("state") for u in sample}
        differ = [u for u in sample if api[u] != expected[u]]
        self.add("GET /api/v1/consents/<wa_id> agrees (sample)", "FAIL" if differ else "PASS", f"{len(sample) - len(differ)}/{len(sample)} agree")

    def check_ledger_counts(self, traffic: TrafficResult, events: list) -> None:
        refs = collections.Counter(e["source_ref"] for e in events)
        doubled = [r for r, n in refs.items() if n > 1]
        by_kind = collections.Counter((e["action"], e["channel"]) for e in events)
        acked = collections.Counter(s.action for s in traffic.saids if s.acked_at is not None)
        sent = collections.Counter(s.action for s in traffic.saids)
        implicit = collections.Counter(e["identifier"] for e in events if e["action"] == "implicit")
        wrote = set(traffic.wrote)  # all within 24 hours: one session each
        sessions_wrong = sorted({u for u in wrote if implicit[u] != 1} | {u for u, n in implicit.items() if n > 1})
        problems = []
        if doubled:
            problems.append(f"{len(doubled)} source references recorded twice")
        checks = [
            ("STOP opt-outs", by_kind["opt_out", "whatsapp_keyword"], acked["opt_out"], sent["opt_out"]),
            ("START opt-ins", by_kind["opt_in", "whatsapp_keyword"], acked["opt_in"], sent["opt_in"]),
            ("staff API opt-ins", by_kind["opt_in", "web"], len(self.campaign_users), len(self.campaign_users)),
        ]
        parts = []
        for label, found, low, high in checks:
            parts.append(f"{label} {found} (acknowledged {low}, sent {high})")
            if not low <= found <= high:
                problems.append(f"{label}: {found} not within {low}..{high}")
        if sessions_wrong:
            problems.append(f"{len(sessions_wrong)} users without exactly one implicit-consent event: " + ", ".join(f"{mask(u)} has {implicit[u]}" for u in sessions_wrong[:5]))
        parts.append(f"implicit-consent events {sum(implicit.values())} for {len(wrote)} users who wrote")
        self.add("one ledger event per source reference, counts as expected", "FAIL" if problems else "PASS", "; ".join(problems or parts))

    def check_opted_out_sends(self, traffic: TrafficResult, events: list, received: list[Received], texts: dict[str, str]) -> None:
        """No template and no welcome reached the imitation between a user's acknowledged STOP and their next opt-in."""
        by_ref = {e["source_ref"]: e for e in events}
        opt_ins: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
        for e in events:
            if e["action"] == "opt_in" and e["scope"] == "all":
                opt_ins[e["identifier"]].append((e["seq"], e["recorded_at"].timestamp()))
        windows: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        for said in traffic.saids:
            event = by_ref.get(f"opt_out:{said.message_id}")
            if said.action != "opt_out" or said.acked_at is None or event is None:
                continue
            later = [at for seq, at in opt_ins[said.wa_id] if seq > event["seq"]]
            windows[said.wa_id].append((said.acked_at, min(later, default=float("inf"))))
        violations = []
        allowed = collections.Counter()
        for r in received:
            spans = windows.get(r.to)
            if not spans or not any(start <= r.at < end for start, end in spans):
                continue
            kind = _kind(r, texts)
            if kind.startswith("template") or kind == Reply.WELCOME.value:
                start = max(s for s, e in spans if s <= r.at < e)
                violations.append(f"{kind} to {mask(r.to)} {1000 * (r.at - start):.0f} ms after its STOP's 200 (answered {r.status})")
            else:
                allowed[kind] += 1
        detail = f"{len(windows)} users opted out at some point; while opted out they got " + (
            ", ".join(f"{k} x{v}" for k, v in sorted(allowed.items())) or "nothing"
        )
        if violations:
            detail = f"{len(violations)} sends while opted out: " + "; ".join(violations[:5]) + f"; {detail}"
        self.add("nothing business-initiated reached an opted-out user (R7, R10)", "FAIL" if violations else "PASS", detail)

    def check_stop_confirmations(self, events: list, outbound: list, received: list[Received], texts: dict[str, str]) -> None:
        stops = [e for e in events if e["action"] == "opt_out" and e["channel"] == "whatsapp_keyword"]
        confirmations = {row["idempotency_key"]: row for row in outbound if row["idempotency_key"].startswith("stop_confirmation:")}
        missing = [e for e in stops if f"stop_confirmation:{e['source_ref'].split(':', 1)[1]}" not in confirmations]
        reached = collections.Counter(row["recipient"] for row in confirmations.values() if row["state"] in ("sent", "delivered", "read"))
        failed = collections.Counter(row["state"] for row in confirmations.values() if row["state"] not in ("sent", "delivered", "read"))
        arrived: dict[str, list[float]] = collections.defaultdict(list)
        for r in received:
            if r.status == 200 and _kind(r, texts) == Reply.STOP_CONFIRMATION.value:
                arrived[r.to].append(r.at)
        extra = {u: len(times) - reached[u] for u, times in arrived.items() if len(times) > reached[u]}
        at_kill = {u for u in extra if any(map(self._near_kill, arrived[u]))}
        other = [u for u in extra if u not in at_kill]
        short = sum(1 for u, n in reached.items() if len(arrived.get(u, [])) < n)
        problems = []
        if missing:
            problems.append(f"{len(missing)} STOPs without a confirmation message")
        if other:
            problems.append(
                f"{sum(extra[u] for u in other)} confirmations sent twice (not at a worker kill): "
                + "; ".join(f"to {mask(u)} at {self._when(arrived[u])}" for u in other[:5])
            )
        if short:
            problems.append(f"{short} users recorded as confirmed but the imitation got fewer")
        detail = (
            f"{len(stops)} STOPs, {len(confirmations)} confirmations ({sum(reached.values())} sent, {dict(failed) or 'none'} otherwise); "
            f"{sum(extra[u] for u in at_kill)} sent twice while in flight at a worker SIGKILL (at-least-once, expected)"
        )
        self.add("one STOP confirmation per STOP", "FAIL" if problems else "PASS", "; ".join(problems + [detail]))

    def check_campaign_duplicates(self, received: list[Received]) -> None:
        copies: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        for r in received:
            if r.status == 200 and r.body.get("type") == "template":
                copies[r.to, r.body["template"]["name"]].append(r.at)
        doubled = {key: sorted(times) for key, times in copies.items() if len(times) > 1}
        at_kill = {key for key, times in doubled.items() if self._near_kill(times[0])}
        other = [key for key in doubled if key not in at_kill]
        detail = (
            f"{len(copies)} campaign messages reached users; {len(at_kill)} sent twice while in flight at a worker SIGKILL "
            f"(at-least-once, expected); {len(other)} sent twice otherwise"
        )
        if other:
            detail += ": " + "; ".join(f"{name} to {mask(to)} at {self._when(doubled[to, name])}" for to, name in other[:5])
        self.add("no campaign message twice (except in flight at a kill)", "FAIL" if other else "PASS", detail)

    def _near_kill(self, at: float) -> bool:
        """Was a send that reached the imitation at `at` in flight when a worker was SIGKILLed (up to 2 s before)?"""
        return any(kill - 2.0 <= at <= kill for kill in self.kills)

    def _when(self, times: list[float]) -> str:
        """Times as seconds since the traffic started, each with the campaign or fault nearest to it."""
        described = []
        for at in sorted(times):
            near = min(self.happenings, key=lambda h: abs(h.wall - at), default=None)
            relative = f" ({abs(at - near.wall):.1f} s {'after' if at >= near.wall else 'before'} {near.what})" if near else ""
            described.append(f"{at - self.t0:.1f} s{relative}")
        return ", ".join(described)

    def check_verify(self) -> None:
        env = {**os.environ, **self.stack.env}
        done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "consent", "verify"], cwd=ROOT, env=env, capture_output=True, text=True)
        output = (done.stdout + done.stderr).strip().splitlines()
        self.add("flask consent verify", "PASS" if done.returncode == 0 else "FAIL", f"exit {done.returncode}: {output[-1] if output else ''}")

    def check_memory(self, monitor: Monitor) -> None:
        for memory in sorted(monitor.memory.values(), key=lambda m: (m.role, m.born)):
            if memory.pid not in {pid for _, pid in self.stack.processes()}:
                continue
            if memory.start_kib is None:
                self.add(f"RSS {memory.role} pid {memory.pid}", "INFO", f"{memory.end_kib / 1024:.0f} MiB at end (started too late for a start sample)")
                continue
            growth = memory.end_kib / memory.start_kib - 1
            self.add(
                f"RSS {memory.role} pid {memory.pid}", "WARN" if growth > 0.5 else "PASS",
                f"{memory.start_kib / 1024:.0f} MiB at start, {memory.end_kib / 1024:.0f} MiB at end ({growth:+.0%})",
            )

    def check_logs(self, traffic: TrafficResult) -> None:
        """No whole wa_id of the traffic in any bot process's output (web, workers); others only reported."""
        numbers = set(traffic.users)
        digits = re.compile(rf"\d{{{WA_ID_LENGTH},}}")
        hits: dict[str, list[str]] = collections.defaultdict(list)
        sources = [(OUT / "processes.log", None), (OUT / "postgres.log", "postgres")]
        for path, fixed in sources:
            if not path.exists():
                continue
            with open(path, encoding="utf-8", errors="replace") as lines:
                for line in lines:
                    for run in digits.findall(line):
                        if any(run[i : i + WA_ID_LENGTH] in numbers for i in range(len(run) - WA_ID_LENGTH + 1)):
                            source = fixed or line.split("|", 1)[0].strip()
                            hits[source].append(digits.sub(lambda m: mask(m.group()), line.strip())[:300])
                            break
        bot = {s: h for s, h in hits.items() if s.startswith(("web", "worker"))}
        for source, found in sorted(bot.items()):
            self.add(f"no whole phone number in the {source} log", "FAIL", f"{len(found)} lines, e.g. (masked here) {found[0]}")
        if not bot:
            self.add("no whole phone number in the web and worker logs", "PASS", f"{len(numbers)} numbers looked for in {OUT.relative_to(ROOT)}/processes.log")
        for source, found in sorted(hits.items()):
            if source not in bot:
                self.add(f"whole phone numbers in the {source} log (not the bot's)", "INFO", f"{len(found)} lines, e.g. (masked here) {found[0]}")

    # -- the report ----------------------------------------------------------------------

    def summary(self, traffic: TrafficResult, timeline: Timeline, engine: sa.Engine) -> None:
        answers = traffic.answers
        errors = sum(v for k, v in answers.items() if k not in ("200", "503"))
        accepted = collections.Counter()
        for r in self.imitation.requests:
            accepted[("template" if r.body.get("type") == "template" else "text") + (" accepted" if r.status == 200 else f" answered {r.code or r.status}")] += 1
        lines = [
            "",
            "summary",
            f"  traffic: {traffic.seconds:.0f} s; {traffic.bodies} bodies / {traffic.events} events sent, "
            f"{traffic.bodies_acked} / {traffic.events_acked} acknowledged, the last {traffic.acked_by:.0f} s after the start "
            f"({traffic.events_acked / traffic.acked_by:.0f} events/s); held back {traffic.held_back:.0f} s "
            f"with {MAX_BACKLOG} bodies unanswered (offered {traffic.events / traffic.seconds:.0f} events/s); "
            f"{traffic.redeliveries} redeliveries ({traffic.redeliveries_acked} answered 200)",
            f"  answers: {answers.get('200', 0)} x 200, {answers.get('503', 0)} x 503, {errors} other (dropped connections, timeouts); "
            f"first POST to 200: p50 {traffic.p50_ms:.0f} ms, p99 {traffic.p99_ms:.0f} ms",
            f"  STOP/START: {len(traffic.saids)} sent, {sum(s.acked_at is not None for s in traffic.saids)} acknowledged; "
            f"{len(traffic.users)} users ({len(self.campaign_users)} opted in by staff)",
            f"  Graph API imitation: {', '.join(f'{k} {v}' for k, v in sorted(accepted.items()))}",
            f"  outbox: {final_states_summary(final_states(engine))}",
            "  campaigns: " + "; ".join(f"{c['template']} ({c['category']}) queued {c.get('queued')} skipped {c.get('skipped')}" for c in self.campaigns),
            "  timeline (seconds since the traffic started):",
            *(f"    {h.at:6.1f}  {h.what}: {h.outcome}" for h in timeline.log),
        ]
        outside = sum(1 for r in self.imitation.requests if r.code == 130429 and not any(a <= r.at <= b + 1 for a, b in self.cap_windows))
        if outside:
            lines.append(f"  note: {outside} 130429 answers outside the 130429 fault (pacing state is lost with Redis)")
        print("\n".join(lines), flush=True)

    def report(self) -> int:
        print("\nchecks", flush=True)
        for check in self.checks:
            print(f"  {check.verdict:<4}  {check.name}: {check.detail}", flush=True)
        failed = [c for c in self.checks if c.verdict == "FAIL"]
        print(f"\nsoak: {'FAIL' if failed else 'PASS'} ({len(failed)} of {len(self.checks)} checks failed)", flush=True)
        return 1 if failed else 0


def _kind(received: Received, texts: dict[str, str]) -> str:
    """What a request to the imitation was: template:<name>, or the reply its text is."""
    if received.body.get("type") == "template":
        return f"template:{received.body['template']['name']}"
    return texts.get(received.body.get("text", {}).get("body", ""), "other text")


def _result(generator: multiprocessing.Process, results: multiprocessing.Queue) -> TrafficResult:
    """The generator's result, or an error as soon as it died without one."""
    while True:
        try:
            result = results.get(timeout=1)
            generator.join(timeout=30)
            return result
        except queue.Empty:
            if not generator.is_alive():
                raise RuntimeError(f"the load generator exited with {generator.exitcode} and no result") from None


def _interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM stops the soak as Ctrl-C does: through its clean-up."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10, help="minutes of traffic (full run)")
    parser.add_argument("--rate", type=float, help="webhook events/s offered (default 300; 60 with --quick)")
    parser.add_argument("--faults", action=argparse.BooleanOptionalAction, default=True, help="inject faults (default on)")
    parser.add_argument("--quick", action="store_true", help="30 s of traffic at 60 events/s with the cheap faults (CI)")
    options = parser.parse_args()
    if os.geteuid() != 0:
        print("error: run the soak as root: it runs its own PostgreSQL as the postgres user", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    return Soak(options).run()


if __name__ == "__main__":
    sys.exit(main())
