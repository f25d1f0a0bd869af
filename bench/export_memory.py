"""Audit export memory: `flask consent export` and `GET /api/v1/audit` over a 1,000,000-event ledger.

The export must stream: its memory may not grow with the ledger. For each backend this bench

1. builds a hash-chained ledger of N events (default 1,000,000) with the fast loader of
   bench/ledger.py (`populate`: the ledger's own row layout and hashing, bulk-written), then
   checks the chain with `Ledger.verify()`. SQLite: bench/out/export-ledger.db (gitignored).
   PostgreSQL: schema `bench_export` of $TEST_POSTGRES_URL (default the local `test` database),
   emptied first;
2. exports it, in a fresh child process each time, over two ranges: the whole ledger and its
   last 10% (`since` = the time of the event at 90%), so that a memory growth with the number
   of events would show as a difference between the two:
   - `python -m flask --app wsgi consent export --format csv|jsonl -o FILE`; its peak RSS is
     its ru_maxrss (os.wait4, from a small launcher process: see PEAK_RSS_LAUNCHER);
   - `GET /api/v1/audit?format=jsonl|csv` from `gunicorn wsgi:app --workers 1` (sync worker, as
     in the Procfile), downloaded with requests (iter_content, counted and dropped, never
     stored); its peak RSS is the worker's VmHWM from /proc (VmRSS is also sampled every
     50 ms during the download, as a cross-check);
3. compares each peak with the baseline of a process of the same kind that loaded the app and
   exported nothing (`since` 2100-01-01): for the CLI a separate run, for HTTP the same fresh
   worker just before the export. It checks each output: line count, first and last seq, and,
   for the CLI's full JSON Lines file, the hash chain line by line up to the ledger head.

Exits 1 when an export grew more than 100 MiB over its baseline, exported the wrong events, or
failed (a gunicorn WORKER TIMEOUT cutting the download short counts as a failure: the default
--timeout of 30 s applies, as with the Procfile, unless --gunicorn-timeout says otherwise).
Seconds are wall time including the app's start-up (about a second); with other work on the
machine they are noisy, the memory figures are what this measures. Needs PostgreSQL (for that
backend) and Redis (database 5; /healthz pings it) as the tests do. Run from the repository root:

    python bench/export_memory.py                        # 1,000,000 events, SQLite and PostgreSQL
    python bench/export_memory.py --quick                # 20,000 events, for CI
    python bench/export_memory.py --backend sqlite --events 200000 --reuse --paths http --gunicorn-timeout 0
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench.ledger import BENCH_KEY, SEED, populate, positive_int  # noqa: E402
from bot.staff.audit import COLUMNS, FORMATS  # noqa: E402
from bot.storage.db import make_engine  # noqa: E402
from bot.storage.ledger import Ledger, as_utc  # noqa: E402
from bot.storage.migrate import upgrade  # noqa: E402
from bot.storage.schema import GENESIS_HASH, consent_events, ledger_head  # noqa: E402
from tests.local_services import POSTGRES_SERVER, free_port, fresh_postgres_schema, stop_group, wait_healthy  # noqa: E402

FULL_EVENTS = 1_000_000
QUICK_EVENTS = 20_000
SCHEMA = "bench_export"
OUT = ROOT / "bench" / "out"
SQLITE_PATH = OUT / "export-ledger.db"
# The project's virtualenv when there is one (the children must import the app and gunicorn).
PYTHON = ROOT / ".venv" / "bin" / "python" if (ROOT / ".venv" / "bin" / "python").exists() else Path(sys.executable)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
ADMIN_TOKEN = "bench-export-token"
GROWTH_LIMIT_MIB = 100
SLICE_FRACTION = 0.1
NOTHING_SINCE = datetime(2100, 1, 1, tzinfo=UTC)  # a range with no events: app loaded, nothing exported
READ_BLOCK = 1 << 20
HTTP_CHUNK = 64 * 1024
RSS_SAMPLE_SECONDS = 0.05
PATHS = ("cli", "http")


# -- what is exported -----------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """A time range to export and what the ledger holds in it (found with SQL, not assumed)."""

    label: str
    since: datetime | None
    events: int
    first_seq: int | None
    last_seq: int | None

    def cli_args(self) -> list[str]:
        # click.DateTime takes no zone and no fraction: whole seconds, read as UTC by the ledger.
        return ["--since", self.since.strftime("%Y-%m-%dT%H:%M:%S")] if self.since else []

    def query(self) -> dict[str, str]:
        return {"since": self.since.strftime("%Y-%m-%dT%H:%M:%SZ")} if self.since else {}


def ledger_range(engine: sa.Engine, label: str, since: datetime | None) -> Range:
    """Count the events an export with this `since` must contain, as the ledger filters them."""
    query = sa.select(sa.func.count(), sa.func.min(consent_events.c.seq), sa.func.max(consent_events.c.seq))
    if since is not None:
        query = query.where(consent_events.c.occurred_at >= as_utc(since))
    with engine.connect() as conn:
        count, first, last = conn.execute(query).one()
    return Range(label, since, count, first, last)


def export_ranges(engine: sa.Engine, events: int) -> list[Range]:
    """The last 10% of the ledger by time, then all of it."""
    start_seq = events - max(1, int(events * SLICE_FRACTION)) + 1
    with engine.connect() as conn:
        moment = conn.execute(sa.select(consent_events.c.occurred_at).where(consent_events.c.seq == start_seq)).scalar_one()
    since = as_utc(moment).replace(microsecond=0)
    return [ledger_range(engine, f"last {SLICE_FRACTION:.0%}", since), ledger_range(engine, "all", None)]


# -- the ledger -----------------------------------------------------------------------------


def sqlite_url() -> str:
    return f"sqlite:///{SQLITE_PATH}"


def postgresql_url(empty: bool) -> str:
    """The bench schema's URL, emptied first unless the existing ledger is to be reused."""
    if empty:
        return fresh_postgres_schema(SCHEMA)
    return f"{POSTGRES_SERVER}?options=-csearch_path%3D{SCHEMA}"


def ledger_size(url: str) -> int | None:
    """Events in an existing ledger whose head agrees with its table, else None."""
    if url.startswith("sqlite") and not SQLITE_PATH.exists():
        return None
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            head = conn.execute(sa.select(ledger_head.c.seq)).scalar_one_or_none()
            count = conn.execute(sa.select(sa.func.count()).select_from(consent_events)).scalar_one()
        return count if head == count else None
    except sa.exc.SQLAlchemyError:
        return None
    finally:
        engine.dispose()


def build_ledger(backend: str, events: int, reuse: bool) -> str:
    """A valid hash-chained ledger of `events` events; returns its URL."""
    url = sqlite_url() if backend == "sqlite" else postgresql_url(empty=False)
    if reuse and ledger_size(url) == events:
        print(f"reuse        the existing {events:,}-event ledger")
    else:
        if backend == "sqlite":
            OUT.mkdir(parents=True, exist_ok=True)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{SQLITE_PATH}{suffix}").unlink(missing_ok=True)
        else:
            url = postgresql_url(empty=True)
        engine = make_engine(url)
        try:
            upgrade(engine)
            populate(engine, Ledger(engine, key=BENCH_KEY), random.Random(SEED), events)
        finally:
            engine.dispose()
    engine = make_engine(url)
    try:
        started = time.perf_counter()
        result = Ledger(engine, key=BENCH_KEY).verify()
        print(f"verify       {result.checked:,} events in {time.perf_counter() - started:.1f} s: "
              f"{'chain ok' if result.ok else f'BROKEN at seq {result.bad_seq}: {result.problem}'}")
        if not result.ok or result.checked != events:
            raise SystemExit("error: the bench ledger is not a valid chain of the requested size")
    finally:
        engine.dispose()
    return url


# -- counting what came out -----------------------------------------------------------------


class Tally:
    """Bytes and lines of a stream fed in chunks, with its first and last line; nothing else kept."""

    def __init__(self) -> None:
        self.bytes = self.lines = 0
        self.first: bytes | None = None
        self.last: bytes | None = None
        self._head = b""
        self._tail = b""  # the line in progress

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        if self.first is None:
            self._head += chunk
            if b"\n" in self._head:
                self.first, self._head = self._head.split(b"\n", 1)[0], b""
        newlines = chunk.count(b"\n")
        if not newlines:
            self._tail += chunk
            return
        self.lines += newlines
        end = chunk.rfind(b"\n")
        start = chunk.rfind(b"\n", 0, end)
        self.last = chunk[start + 1:end] if start >= 0 else self._tail + chunk[:end]
        self._tail = chunk[end + 1:]

    def events(self, fmt: str) -> int:
        """Complete lines, less the CSV header: the events received (the bench's hold no line breaks)."""
        return max(0, self.lines - (1 if fmt == "csv" else 0))

    @property
    def unterminated(self) -> bool:
        return bool(self._tail)


def tally_file(path: Path) -> Tally:
    tally = Tally()
    with path.open("rb") as file:
        while block := file.read(READ_BLOCK):
            tally.feed(block)
    return tally


def first_field_seq(line: bytes | None, fmt: str) -> int | None:
    """The seq of one exported line (JSON object or CSV row), None when it has none."""
    if not line:
        return None
    try:
        if fmt == "jsonl":
            return int(json.loads(line)["seq"])
        return int(next(csv.reader([line.decode("utf-8")]))[0])
    except (ValueError, KeyError, TypeError, StopIteration):
        return None


def check_output(tally: Tally, fmt: str, expected: Range) -> str | None:
    """What is wrong with an export of `expected`, or None. CSV: a header line, then one line per
    event (the bench's events hold no line breaks; the CLI's CSV files are also parsed as CSV)."""
    header = 1 if fmt == "csv" else 0
    if tally.unterminated:
        return f"the output ends in the middle of a line after {tally.lines:,} lines"
    if tally.lines != expected.events + header:
        return f"{tally.lines - header:,} events exported, {expected.events:,} expected"
    if header and (tally.first or b"").decode("utf-8", "replace") != ",".join(COLUMNS):
        return f"unexpected CSV header {tally.first[:80]!r}"
    if expected.events:
        first = first_field_seq(tally.first, fmt) if fmt == "jsonl" else expected.first_seq  # CSV: the header
        last = first_field_seq(tally.last, fmt)
        if (first, last) != (expected.first_seq, expected.last_seq):
            return f"events from seq {first} to {last}, expected {expected.first_seq} to {expected.last_seq}"
    return None


def check_csv_records(path: Path, expected: int) -> str | None:
    """Parse the file as CSV: the records (not just lines) must be the header and one per event."""
    with path.open(newline="", encoding="utf-8") as file:
        records = sum(1 for _ in csv.reader(file))
    return None if records == expected + 1 else f"{records - 1:,} CSV records for {expected:,} events"


def check_jsonl_chain(path: Path, url: str) -> str | None:
    """Each line follows the one before it (seq + 1, prev_hash = its hash) and the last is the head."""
    seq, prev_hash = 0, GENESIS_HASH
    with path.open(encoding="utf-8") as file:
        for line in file:
            event = json.loads(line)
            if event["seq"] != seq + 1 or event["prev_hash"] != prev_hash:
                return f"the exported chain breaks at seq {event['seq']}"
            seq, prev_hash = event["seq"], event["hash"]
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            head = conn.execute(sa.select(ledger_head.c.seq, ledger_head.c.hash)).one()
    finally:
        engine.dispose()
    return None if (seq, prev_hash) == (head.seq, head.hash) else f"the export ends at seq {seq}, the head is at {head.seq}"


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    path: str
    fmt: str
    range: Range
    exported: int  # events received, complete lines
    bytes: int
    seconds: float
    baseline_kib: int
    peak_kib: int
    sampled_kib: int | None  # highest VmRSS seen while downloading (HTTP only)
    problem: str | None

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.baseline_kib) / 1024

    @property
    def ok(self) -> bool:
        return self.problem is None and self.growth_mib <= GROWTH_LIMIT_MIB


def app_env(url: str) -> dict[str, str]:
    """The settings the app's children run with (wsgi.py: create_app() reads them from the environment)."""
    return {**os.environ, "DATABASE_URL": url, "REDIS_URL": REDIS_URL, "ADMIN_API_TOKEN": ADMIN_TOKEN}


# Runs a command and prints its peak RSS in KiB. ru_maxrss of a child also counts the memory of
# the process it was forked from (Linux keeps the larger across fork and exec), so the export is
# started from this small launcher rather than from the bench, whose own RSS would mask it.
PEAK_RSS_LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def run_cli_export(url: str, fmt: str, export_range: Range | None, output: Path, log: Path) -> tuple[int, float, str | None]:
    """Run `flask consent export` in a fresh process; (its peak RSS in KiB, seconds, problem)."""
    args = export_range.cli_args() if export_range else ["--since", NOTHING_SINCE.strftime("%Y-%m-%dT%H:%M:%S")]
    command = [str(PYTHON), "-m", "flask", "--app", "wsgi", "consent", "export", "--format", fmt, "-o", str(output), *args]
    started = time.perf_counter()
    with log.open("ab") as log_file:
        launcher = subprocess.run(
            [str(PYTHON), "-c", PEAK_RSS_LAUNCHER, *command], cwd=ROOT, env=app_env(url),
            stdout=subprocess.PIPE, stderr=log_file, check=True,
        )
    seconds = time.perf_counter() - started
    peak_kib, status = (int(field) for field in launcher.stdout.split()[-2:])
    return peak_kib, seconds, None if status == 0 else f"exit status {status} (see {log})"


def bench_cli(backend: str, url: str, fmt: str, ranges: Sequence[Range], chain_url: str | None) -> list[Result]:
    log = OUT / f"export-{backend}-cli.log"
    idle = OUT / f"export-{backend}-idle.{fmt}"
    baseline_kib, _, problem = run_cli_export(url, fmt, None, idle, log)
    if problem is None:
        problem = check_output(tally_file(idle), fmt, Range("nothing", NOTHING_SINCE, 0, None, None))
    idle.unlink(missing_ok=True)
    if problem:
        raise SystemExit(f"error: the idle CLI export failed: {problem}")
    results = []
    for export_range in ranges:
        output = OUT / f"export-{backend}-{export_range.events}.{fmt}"
        peak_kib, seconds, problem = run_cli_export(url, fmt, export_range, output, log)
        tally = Tally()
        if problem is None:
            tally = tally_file(output)
            problem = check_output(tally, fmt, export_range)
        if problem is None and fmt == "csv":
            problem = check_csv_records(output, export_range.events)
        if problem is None and fmt == "jsonl" and export_range.since is None and chain_url:
            problem = check_jsonl_chain(output, chain_url)
        output.unlink(missing_ok=True)
        results.append(report(Result(backend, "cli", fmt, export_range, tally.events(fmt), tally.bytes, seconds, baseline_kib, peak_kib, None, problem)))
    return results


def proc_status(pid: int) -> dict[str, int]:
    """The kB figures of /proc/<pid>/status (VmRSS, VmHWM, ...)."""
    figures = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                figures[name] = int(value.split()[0])
    return figures


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (psutil is not a dependency: /proc/*/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@dataclass
class Server:
    port: int
    master: int
    worker: int
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextmanager
def gunicorn(url: str, log: Path, timeout: int | None) -> Iterator[Server]:
    """A fresh `gunicorn wsgi:app` with one sync worker; yields once /healthz answers 200."""
    port = free_port()
    command = [str(PYTHON), "-m", "gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--no-control-socket"]
    if timeout is not None:
        command += ["--timeout", str(timeout)]
    with log.open("ab") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, env=app_env(url), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_healthy(process, port, log)
        except RuntimeError as error:
            raise SystemExit(f"error: {error}") from None
        workers = children(process.pid)
        if len(workers) != 1:
            raise SystemExit(f"error: expected one gunicorn worker, found {workers}")
        yield Server(port, process.pid, workers[0], log)
    finally:
        stop_group(process)


class RssSampler(threading.Thread):
    """The highest VmRSS of a process, sampled until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.highest = pid, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.highest = max(self.highest, proc_status(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return
            self._done.wait(RSS_SAMPLE_SECONDS)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.highest


def download(server: Server, fmt: str, query: dict[str, str]) -> tuple[Tally, float, str | None]:
    """GET /api/v1/audit, streamed and counted, nothing kept; (tally, seconds, problem)."""
    tally, started = Tally(), time.perf_counter()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        with requests.get(server.url("/api/v1/audit"), params={"format": fmt, **query}, headers=headers,
                          stream=True, timeout=(5, 300)) as response:
            if response.status_code != 200:
                return tally, time.perf_counter() - started, f"HTTP {response.status_code}: {response.text[:200]}"
            for chunk in response.iter_content(HTTP_CHUNK):
                tally.feed(chunk)
    except requests.RequestException as error:  # the worker died mid-body (a timeout, say)
        return tally, time.perf_counter() - started, f"download failed after {tally.bytes:,} bytes: {type(error).__name__}"
    return tally, time.perf_counter() - started, None


def bench_http(backend: str, url: str, fmt: str, ranges: Sequence[Range], timeout: int | None) -> list[Result]:
    log = OUT / f"export-{backend}-gunicorn.log"
    results = []
    for export_range in ranges:
        with gunicorn(url, log, timeout) as server:
            nothing = Range("nothing", NOTHING_SINCE, 0, None, None)
            tally, _, problem = download(server, fmt, nothing.query())
            problem = problem or check_output(tally, fmt, nothing)
            if problem:
                raise SystemExit(f"error: the idle HTTP export failed: {problem}")
            baseline_kib = proc_status(server.worker)["VmHWM"]
            sampler = RssSampler(server.worker)
            sampler.start()
            tally, seconds, problem = download(server, fmt, export_range.query())
            sampled_kib = sampler.stop()
            try:
                peak_kib = proc_status(server.worker)["VmHWM"]
            except OSError:
                peak_kib = sampled_kib
                problem = problem or "the worker is gone"
            if problem is None:
                problem = check_output(tally, fmt, export_range)
            if f"WORKER TIMEOUT (pid:{server.worker})" in log.read_text(errors="replace"):
                problem = f"gunicorn WORKER TIMEOUT cut the download short; {problem or 'see ' + str(log)}"
            elif children(server.master) != [server.worker]:
                problem = f"the worker was replaced; {problem or 'see ' + str(log)}"
        results.append(report(Result(backend, "http", fmt, export_range, tally.events(fmt), tally.bytes, seconds, baseline_kib, peak_kib, sampled_kib, problem)))
    return results


# -- reporting ------------------------------------------------------------------------------


def mib(kib: int) -> str:
    return f"{kib / 1024:,.1f}"


HEADER = (
    f"{'backend':<10} {'path':<4} {'format':<6} {'range':<8} {'events':>10} {'bytes':>13} {'seconds':>8} "
    f"{'events/s':>9} {'baseline MiB':>12} {'peak MiB':>9} {'growth MiB':>10}  verdict"
)


def row(result: Result) -> str:
    rate = result.exported / result.seconds if result.seconds else 0
    verdict = "ok" if result.ok else "FAIL" + (f": {result.problem}" if result.problem else f": grew more than {GROWTH_LIMIT_MIB} MiB")
    return (
        f"{result.backend:<10} {result.path:<4} {result.fmt:<6} {result.range.label:<8} {result.exported:>10,} "
        f"{result.bytes:>13,} {result.seconds:>8.1f} {rate:>9,.0f} {mib(result.baseline_kib):>12} "
        f"{mib(result.peak_kib):>9} {result.growth_mib:>10.1f}  {verdict}"
    )


def report(result: Result) -> Result:
    sampled = f", highest sampled VmRSS {mib(result.sampled_kib)} MiB" if result.sampled_kib else ""
    print(f"export       {result.path} {result.fmt} {result.range.label}: {result.exported:,} of {result.range.events:,} events in "
          f"{result.seconds:.1f} s, peak {mib(result.peak_kib)} MiB (idle {mib(result.baseline_kib)} MiB){sampled}"
          + (f"  PROBLEM: {result.problem}" if result.problem else ""), flush=True)
    return result


def flatness(results: Iterable[Result]) -> list[str]:
    """Per backend, path and format: how much more the full export took than the 10% slice."""
    by_kind: dict[tuple[str, str, str], list[Result]] = {}
    for result in results:
        by_kind.setdefault((result.backend, result.path, result.fmt), []).append(result)
    lines = []
    for (backend, path, fmt), group in by_kind.items():
        small, large = min(group, key=lambda r: r.range.events), max(group, key=lambda r: r.range.events)
        lines.append(
            f"{backend:<10} {path:<4} {fmt:<6} {small.range.events:>9,} -> {large.range.events:>9,} events: "
            f"peak {mib(small.peak_kib)} -> {mib(large.peak_kib)} MiB ({(large.peak_kib - small.peak_kib) / 1024:+.1f} MiB)"
            + ("" if small.problem is None and large.problem is None else "  (incomplete: see the verdicts above)")
        )
    return lines


# -- main -----------------------------------------------------------------------------------


def run_backend(backend: str, events: int, reuse: bool, paths: Sequence[str], timeout: int | None) -> list[Result]:
    print(f"== {backend}")
    url = build_ledger(backend, events, reuse)
    engine = make_engine(url)
    try:
        ranges = export_ranges(engine, events)
    finally:
        engine.dispose()
    print("ranges       " + "; ".join(
        f"{r.label}: {r.events:,} events (seq {r.first_seq:,}..{r.last_seq:,})"
        + (f" since {r.query()['since']}" if r.since else "") for r in ranges
    ), flush=True)
    results = []
    if "cli" in paths:
        for fmt in FORMATS:
            results += bench_cli(backend, url, fmt, ranges, chain_url=url)
    if "http" in paths:
        for fmt in ("jsonl", "csv"):
            results += bench_http(backend, url, fmt, ranges, timeout)
    print()
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help=f"small preset for CI: {QUICK_EVENTS:,} events")
    parser.add_argument("--events", type=positive_int, help=f"events in the ledger (default {FULL_EVENTS:,})")
    parser.add_argument("--paths", choices=[*PATHS, "both"], default="both", help="which export paths to measure")
    parser.add_argument("--reuse", action="store_true", help="keep an existing bench ledger of the same size instead of rebuilding it")
    parser.add_argument(
        "--gunicorn-timeout", type=int, metavar="SECONDS",
        help="gunicorn's --timeout for the worker (default: gunicorn's own, 30 s, as in the Procfile; 0 = none)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    events = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    paths = PATHS if args.paths == "both" else (args.paths,)
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"audit export memory: {events:,} events; {PYTHON}; {os.cpu_count()} CPUs, "
          f"1-min load average {os.getloadavg()[0]:.2f}\n", flush=True)
    results = []
    for backend in backends:
        results += run_backend(backend, events, args.reuse, paths, args.gunicorn_timeout)
    print(HEADER)
    for result in results:
        print(row(result))
    print("\nflatness (peak RSS, 10% slice -> whole ledger):")
    for line in flatness(results):
        print("  " + line)
    failed = [result for result in results if not result.ok]
    print(f"\n{len(results) - len(failed)} of {len(results)} exports within baseline + {GROWTH_LIMIT_MIB} MiB and complete: "
          f"{'PASS' if not failed else 'FAIL'}   (1-min load average at end {os.getloadavg()[0]:.2f})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
