"""Slow clients against the web process: do /healthz and the webhook still answer while
hundreds of connections dribble their requests in?

It starts the web process as the Procfile does (`gunicorn wsgi:app`, workers, worker class and
threads from gunicorn.conf.py, `--access-logfile -`) on a free 127.0.0.1 port, against the
PostgreSQL schema `bench_slow` of the database `test` ($BENCH_POSTGRES_SCHEMA) and Redis
database 12 ($BENCH_REDIS_URL), both emptied first (no RQ worker: queued replies just wait).
Then, from this process:

1. it opens 300 slow connections (`--slow`), one after the other over 1.5 s (so that every
   worker process takes its share), and keeps them open: most send a request line and then one
   more header byte every second, never finishing the headers (slowloris); one in six
   (`--body-drippers`) sends complete headers for a signed POST /webhook with a 4 KiB body and
   then one body byte every second. A slow connection the server closes is opened again at
   once, so that 300 are always dribbling: the bench counts those closes and how long each
   connection lasted;
2. once they are all open and dribbling, it sends `/healthz` GETs and signed webhook POSTs (a
   text message in Meta's shape, tests/fixtures/payloads/text_message.json, a new user and
   message id each, signed with X-Hub-Signature-256 under the app secret it configures),
   alternately, at 50 requests/s in all, for 60 s (`--seconds`), each on a connection of its
   own, open loop (on schedule whatever the answers; latency from the scheduled time);
3. it reports each kind's requests answered 200, answered otherwise and not answered within
   10 s (`--timeout`), p50 / p99 / max latency of those answered, the slow connections the
   server closed, and PASS when every request was answered 200, FAIL otherwise. Last, with 100
   new slow connections open, it stops the server with SIGTERM and shows how long that took.

It is a measurement: it exits 0 whatever the verdict (1 only when the server does not start).
Run from the repository root:

    python bench/slow_clients.py                  # 300 slow connections, 60 s of requests
    python bench/slow_clients.py --quick          # 3 s of requests (about 10 s with start-up), for CI
    python bench/slow_clients.py --seconds 20 --slow 500
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import json
import math
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.local_services import free_port, fresh_postgres_schema, migrated, wait_healthy  # noqa: E402

SCHEMA = os.environ.get("BENCH_POSTGRES_SCHEMA", "bench_slow")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
APP_SECRET = "bench-app-secret"
PHONE_NUMBER_ID = "106540352242922"
TEXT_MESSAGE = ROOT / "tests" / "fixtures" / "payloads" / "text_message.json"

DRIP_INTERVAL = 1.0  # s between two bytes of a slow connection
DRIPPED_BODY = 4096  # bytes a body dripper announces
SETTLE = 1.5  # s over which the slow connections are opened, before the requests start (--quick: 1 s)


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()


def text_message(serial: int) -> bytes:
    """The fixture's text message from a new user (a new wa_id and message id), timestamped now."""
    body = json.loads(TEXT_MESSAGE.read_text(encoding="utf-8"))
    value = body["entry"][0]["changes"][0]["value"]
    sender = f"1555{7_000_000 + serial:07d}"
    value["contacts"][0]["wa_id"] = sender
    message = value["messages"][0]
    message.update({"from": sender, "id": f"wamid.slow-clients-{serial}", "timestamp": str(int(time.time()))})
    return json.dumps(body).encode()


# -- the slow connections ---------------------------------------------------------------------


@dataclass
class SlowStats:
    opened: int = 0
    failed_to_open: int = 0
    closed_by_server: list[float] = field(default_factory=list)  # seconds each one lasted
    answers: dict[str, int] = field(default_factory=dict)  # what the server said before closing, by status


async def slow_connection(port: int, body: bool, stats: SlowStats, stop: asyncio.Event, opened: asyncio.Event | None, delay: float) -> None:
    """After `delay`, keep one dribbling connection open until `stop`; open it again whenever the server closes it."""
    await asyncio.sleep(delay)
    stopping = asyncio.create_task(stop.wait())
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats.failed_to_open += 1
            await asyncio.sleep(DRIP_INTERVAL)
            continue
        stats.opened += 1
        if opened is not None:
            opened.set()
            opened = None
        started = time.monotonic()
        if body:
            head = (
                f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {DRIPPED_BODY}\r\nX-Hub-Signature-256: {sign(b'x' * DRIPPED_BODY)}\r\n\r\n"
            ).encode()
            drip: Iterator[bytes] = itertools.repeat(b"x")
        else:
            head = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode()
            drip = itertools.cycle([b"a", b"b", b"c"])  # a header value that never ends
        closed = asyncio.create_task(reader.read(1024))  # EOF or an answer: the server gave up on it
        try:
            writer.write(head)
            while not stop.is_set():
                done, _ = await asyncio.wait({closed, stopping}, timeout=DRIP_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
                if closed in done or stop.is_set():
                    break
                writer.write(next(drip))
                await writer.drain()
        except OSError:
            pass
        if not stop.is_set():
            stats.closed_by_server.append(time.monotonic() - started)
            answer = closed.result() if closed.done() and not closed.exception() else b""
            status = answer.split()[1].decode() if answer.startswith(b"HTTP/") else "closed, no answer"
            stats.answers[status] = stats.answers.get(status, 0) + 1
        closed.cancel()
        writer.close()
    stopping.cancel()


# -- the requests that must be answered -------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    kind: str  # "healthz" or "webhook"
    status: str  # "200", another status, "no answer" (timeout) or a connection error's name
    latency: float


async def fetch(port: int, kind: str, serial: int) -> str:
    """One request on a connection of its own; its status once the whole answer has arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if kind == "healthz":
            request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        else:
            body = text_message(serial)
            request = (
                f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nX-Hub-Signature-256: {sign(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body
        writer.write(request)
        await writer.drain()
        answer = await reader.read()  # to the end: the server closes after its answer
    finally:
        writer.close()
    return answer.split()[1].decode() if answer.startswith(b"HTTP/") else "empty answer"


async def timed(port: int, kind: str, serial: int, due: float, timeout: float) -> Outcome:
    loop = asyncio.get_running_loop()
    try:
        status = await asyncio.wait_for(fetch(port, kind, serial), timeout=due + timeout - loop.time())
    except TimeoutError:
        status = "no answer"
    except OSError as error:
        status = type(error).__name__
    return Outcome(kind, status, loop.time() - due)


async def drive(port: int, slow: int, body_drippers: int, seconds: float, rate: float, timeout: float, settle: float) -> tuple[list[Outcome], SlowStats]:
    stats, stop = SlowStats(), asyncio.Event()
    first_open = [asyncio.Event() for _ in range(slow)]
    dribblers = [  # opened one after the other over `settle` seconds, as an attacker would, so that every worker process takes its share
        asyncio.create_task(slow_connection(port, (index + 1) * body_drippers // slow > index * body_drippers // slow, stats, stop, first_open[index], settle * index / slow))
        for index in range(slow)
    ]
    await asyncio.gather(*(event.wait() for event in first_open))
    await asyncio.sleep(0.5)  # every slow connection has sent its first bytes: a thread server has handed them threads
    loop = asyncio.get_running_loop()
    start, requests, serial = loop.time(), [], 0
    while (due := start + serial / rate) < start + seconds:
        await asyncio.sleep(max(0.0, due - loop.time()))
        kind = "healthz" if serial % 2 == 0 else "webhook"
        requests.append(asyncio.create_task(timed(port, kind, serial, due, timeout)))
        serial += 1
    outcomes = await asyncio.gather(*requests)
    stop.set()
    await asyncio.gather(*dribblers)
    return outcomes, stats


# -- the server -------------------------------------------------------------------------------


@dataclass
class Served:
    port: int
    process: subprocess.Popen
    log: Path


@contextmanager
def web_process(log: Path) -> Iterator[Served]:
    """The Procfile's web process on a free loopback port, with fresh stores; stopped (SIGKILL) if left running."""
    database_url = migrated(fresh_postgres_schema(SCHEMA))
    connection = redis.Redis.from_url(REDIS_URL)
    connection.flushdb()
    connection.close()
    env = {
        **os.environ, "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "WHATSAPP_APP_SECRET": APP_SECRET,
        "WHATSAPP_TOKEN": "bench-token", "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID, "BUSINESS_NAME": "Bench Bakery",
    }
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{port}", "--no-control-socket", "--access-logfile", "-"]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(process, port, log)
        yield Served(port, process, log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()


async def stop_while_dribbling(served: Served, slow: int) -> tuple[float, bool]:
    """SIGTERM the server while `slow` header-dribbling connections stay open: seconds until it
    exited (at most 60), and whether it did."""
    connections = []
    for _ in range(slow):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", served.port)
        except OSError:
            continue
        writer.write(b"GET /healthz HTTP/1.1\r\nX-Slow: a")
        connections.append(writer)
    await asyncio.sleep(1)
    sent = time.monotonic()
    served.process.terminate()
    while served.process.poll() is None and time.monotonic() - sent < 60:
        await asyncio.sleep(0.05)
    for writer in connections:
        writer.close()
    return time.monotonic() - sent, served.process.poll() is not None


# -- the report -------------------------------------------------------------------------------


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)] if ordered else math.nan


def report(outcomes: list[Outcome], stats: SlowStats, seconds: float) -> tuple[str, bool]:
    lines = [f"{'':<10}{'sent':>6}{'200':>6}{'other':>7}{'no answer':>11}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"]
    for kind in ("healthz", "webhook", "all"):
        chosen = [o for o in outcomes if kind in ("all", o.kind)]
        answered = sorted(o.latency * 1000 for o in chosen if o.status == "200")
        unanswered = sum(o.status == "no answer" for o in chosen)
        other = len(chosen) - len(answered) - unanswered
        lines.append(
            f"{kind:<10}{len(chosen):>6}{len(answered):>6}{other:>7}{unanswered:>11}"
            f"{percentile(answered, 0.5):>9.1f}{percentile(answered, 0.99):>9.1f}{answered[-1] if answered else math.nan:>9.1f}"
        )
    failures: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.status != "200":
            failures[f"{outcome.kind} {outcome.status}"] = failures.get(f"{outcome.kind} {outcome.status}", 0) + 1
    if failures:
        lines.append("not answered 200: " + ", ".join(f"{n} {what}" for what, n in sorted(failures.items())))
    lasted = sorted(stats.closed_by_server)
    lines.append(
        f"slow connections: {stats.opened} opened ({stats.failed_to_open} refused), {len(lasted)} closed by the server"
        + (f" after {statistics.median(lasted):.1f} s (median), {lasted[0]:.1f} to {lasted[-1]:.1f} s" if lasted else "")
        + (", answering " + ", ".join(f"{n} {status}" for status, n in sorted(stats.answers.items())) if stats.answers else "")
    )
    everyone = bool(outcomes) and not failures
    verdict = f"every request answered 200 within its timeout: {'PASS' if everyone else 'FAIL'}"
    verdict += f" ({len(outcomes) - sum(failures.values())} of {len(outcomes)} in {seconds:g} s)"
    lines.append(verdict)
    return "\n".join(lines), everyone


def main() -> int:
    parser = argparse.ArgumentParser(description="Slow clients dribbling requests at the web process while /healthz and webhooks must answer.")
    parser.add_argument("--quick", action="store_true", help="3 s of requests, about 10 s with start-up (CI)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of /healthz and webhook requests (default 60)")
    parser.add_argument("--slow", type=int, default=300, help="slow connections kept open (default 300)")
    parser.add_argument("--body-drippers", type=int, default=None, help="of them, those dribbling a body (default a sixth)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s, /healthz and webhooks alternately (default 50)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a request may take before it counts as not answered")
    options = parser.parse_args()
    seconds = 3.0 if options.quick else options.seconds
    settle = 1.0 if options.quick else SETTLE
    body_drippers = options.slow // 6 if options.body_drippers is None else options.body_drippers
    logs = Path(tempfile.mkdtemp(prefix="slow-clients-"))
    serving = runpy.run_path(str(ROOT / "gunicorn.conf.py"))  # WEB_CONCURRENCY and WEB_THREADS as the web process reads them
    print(
        f"gunicorn wsgi:app: {serving['workers']} {serving['worker_class']} workers, {serving['threads']} threads each; "
        f"{options.slow} slow connections ({body_drippers} dribbling a body, one byte per {DRIP_INTERVAL:g} s), "
        f"{options.rate:g} requests/s for {seconds:g} s; log in {logs}", flush=True,
    )
    try:
        with web_process(logs / "web.log") as served:
            outcomes, stats = asyncio.run(drive(served.port, options.slow, body_drippers, seconds, options.rate, options.timeout, settle))
            text, _ = report(outcomes, stats, seconds)
            print(text, flush=True)
            took, stopped = asyncio.run(stop_while_dribbling(served, min(options.slow, 100)))
            print(f"SIGTERM with {min(options.slow, 100)} slow connections open: "
                  + (f"the server exited {took:.1f} s later" if stopped else f"the server still ran {took:.0f} s later (killed)"))
    except RuntimeError as failure:
        print(f"the web process did not start: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
