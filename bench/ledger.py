"""Benchmark of the consent ledger (bot/storage/ledger.py) on SQLite and PostgreSQL.

For each backend it measures:

1. populate: bulk-loads N hash-chained events (default 1,000,000) over about N/10 users, with a
   realistic mix of actions, plus `contacts` rows for half of the users. Rows are built by the
   ledger's own `_prepare` and hashed with `event_hash` in seq order, exactly as `_extend_chain`
   does, so the chain is valid (check it with --verify). Written with executemany on SQLite and
   COPY on PostgreSQL, in transactions of 100,000 events.
2. state: warm `Ledger.state(wa_id)` look-ups of random existing users (p50, p99, max).
3. append: single-event `Ledger.append` calls, each its own durable commit (events/s, p50, p99),
   then `Ledger.append_many` in batches of 50 (events/s).
4. verify (only with --verify): `Ledger.verify()` over the whole chain.

Targets: state p99 < 1 ms; >= 1,000 appended events/s from one process with durable commits.
It is a measurement, not a test: it exits 0 whatever the results, non-zero only on a crash.

SQLite uses a temporary file (under $TMPDIR). PostgreSQL uses the schema `bench_ledger` of the
database `test` at 127.0.0.1:5432 (user postgres, trust auth); its tables are dropped first.

Run from the repository root:

    python bench/ledger.py                      # 1,000,000 events on both backends
    python bench/ledger.py --quick              # small preset for CI
    python bench/ledger.py --backend sqlite --events 200000 --lookups 2000 --appends 1000 --verify
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import Connection, Engine  # noqa: E402

from bot.domain.consent import Action, Channel, EventDraft, Scope  # noqa: E402
from bot.storage.db import WRITE_OPTION, make_engine  # noqa: E402
from bot.storage.ledger import Ledger, event_hash, utc_now  # noqa: E402
from bot.storage.migrate import upgrade  # noqa: E402
from bot.storage.schema import GENESIS_HASH, consent_events, contacts, ledger_head  # noqa: E402

POSTGRESQL_SCHEMA = "bench_ledger"
POSTGRESQL_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{POSTGRESQL_SCHEMA}"

STATE_P99_TARGET_MS = 1.0
APPEND_RATE_TARGET = 1_000
APPEND_BATCH = 50
POPULATE_CHUNK = 100_000
WARMUP_LOOKUPS = 1_000
FIRST_WA_ID = 15_550_000_000
SEED = 20240611

CONSENT_TEXT = (
    "Yes, I would like to receive appointment reminders, service updates and occasional offers "
    "from Example Clinic on WhatsApp. I can reply STOP at any time to stop all messages."
)
USER_AGENT = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Mobile"
# How a user's later events are spread; a user's first event is a session or a web opt-in.
LATER_ACTIONS = (Action.IMPLICIT, Action.OPT_IN, Action.OPT_OUT, Action.OPT_OUT_NOTICE_GIVEN)
LATER_WEIGHTS = (60, 12, 10, 18)
OPT_IN_CHANNELS = (Channel.WEB, Channel.WEB, Channel.PAPER, Channel.IN_PERSON, Channel.WHATSAPP_BUTTON)


@dataclass(frozen=True)
class Sizes:
    events: int
    lookups: int
    appends: int


FULL = Sizes(events=1_000_000, lookups=5_000, appends=3_000)
QUICK = Sizes(events=20_000, lookups=1_000, appends=500)


# -- synthetic events -----------------------------------------------------------------------


def make_draft(rng: random.Random, wa_id: str, ref: str, first: bool, occurred_at: datetime | None) -> EventDraft:
    """One plausible event for a user; `ref` (a message or request id) makes its source_ref unique."""
    if first:
        action = Action.IMPLICIT if rng.random() < 0.75 else Action.OPT_IN
    else:
        action = rng.choices(LATER_ACTIONS, LATER_WEIGHTS)[0]
    if action is Action.IMPLICIT:
        return EventDraft(
            wa_id, action, Channel.WHATSAPP_SESSION, f"implicit:{ref}", "webhook",
            evidence={"message_id": ref}, occurred_at=occurred_at,
        )
    if action is Action.OPT_IN:
        channel = Channel.WEB if first else rng.choice(OPT_IN_CHANNELS)
        evidence = {"form": "signup-v3", "ip": f"203.0.113.{rng.randrange(256)}", "user_agent": USER_AGENT, "ref": ref}
        return EventDraft(
            wa_id, action, channel, f"opt_in:{ref}", "staff:frontdesk",
            consent_text=CONSENT_TEXT, evidence=evidence, occurred_at=occurred_at,
        )
    if action is Action.OPT_OUT:
        scope = Scope.ALL if rng.random() < 0.7 else Scope.MARKETING
        return EventDraft(
            wa_id, action, Channel.WHATSAPP_KEYWORD, f"opt_out:{ref}", "webhook", scope=scope,
            evidence={"message_id": ref, "keyword": "STOP"}, occurred_at=occurred_at,
        )
    return EventDraft(
        wa_id, action, Channel.WHATSAPP_DELIVERY, f"notice:{ref}", "webhook",
        evidence={"message_id": ref, "template": "welcome_stop_notice"}, occurred_at=occurred_at,
    )


def chained_rows(ledger: Ledger, rng: random.Random, events: int, users: int, seen: bytearray) -> Iterator[list[dict]]:
    """Yield the ledger's rows in seq order, in chunks, hash-chained from the genesis hash.

    Events are spread evenly over the past year, each for a random user; `seen` marks the users
    who got at least one event.
    """
    step = timedelta(days=365) / events
    start = utc_now() - timedelta(days=366)
    prev_hash, chunk = GENESIS_HASH, []
    for seq in range(1, events + 1):
        user = rng.randrange(users)
        occurred_at = start + step * seq
        draft = make_draft(rng, str(FIRST_WA_ID + user), f"wamid.HBgL{seq:012d}", not seen[user], occurred_at)
        seen[user] = 1
        # The ledger's own row layout and checks (private, so that the two cannot drift apart),
        # chained and hashed as Ledger._extend_chain does.
        row = ledger._prepare(draft, occurred_at + timedelta(microseconds=rng.randrange(2_000_000)))
        row.update(seq=seq, prev_hash=prev_hash)
        row["hash"] = prev_hash = event_hash(row)
        chunk.append(row)
        if len(chunk) == POPULATE_CHUNK or seq == events:
            yield chunk
            chunk = []


# -- populating -----------------------------------------------------------------------------


def write_events(conn: Connection, rows: list[dict]) -> None:
    """Bulk insert: COPY on PostgreSQL, executemany elsewhere."""
    if conn.dialect.name != "postgresql":
        conn.execute(consent_events.insert(), rows)
        return
    columns = [column.name for column in consent_events.columns]
    with conn.connection.driver_connection.cursor() as cursor:
        with cursor.copy(f"COPY consent_events ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[name] for name in columns])


def write_head_and_contacts(conn: Connection, head: dict, rng: random.Random, wa_ids: Sequence[str]) -> int:
    """Point the chain head at the last event; give every other user a last inbound message in the
    past 48 hours (so about a quarter of users have an open window). Returns the contacts written."""
    conn.execute(ledger_head.update().where(ledger_head.c.id == 1).values(seq=head["seq"], hash=head["hash"]))
    now = utc_now()
    rows = [
        {"wa_id": wa_id, "last_inbound_at": now - timedelta(seconds=rng.randrange(48 * 3600))}
        for wa_id in wa_ids[::2]
    ]
    conn.execute(contacts.insert(), rows)
    return len(rows)


def tidy_after_load(engine: Engine) -> None:
    """What a database would have done by itself after a load: fresh statistics, checkpointed WAL."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE consent_events, contacts, ledger_head")
        return
    connection = engine.raw_connection()  # autocommit mode (see make_engine): no BEGIN around these
    try:
        cursor = connection.cursor()
        cursor.execute("ANALYZE")
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cursor.close()
    finally:
        connection.close()


def populate(engine: Engine, ledger: Ledger, rng: random.Random, events: int) -> list[str]:
    """Load the ledger, its head and some contacts, print the time, and return the wa_ids that have events."""
    users = max(1, events // 10)
    seen = bytearray(users)
    writer = engine.execution_options(**{WRITE_OPTION: True})
    started, writing = time.perf_counter(), 0.0
    for rows in chained_rows(ledger, rng, events, users, seen):
        write_started = time.perf_counter()
        with writer.begin() as conn:
            write_events(conn, rows)
        writing += time.perf_counter() - write_started
    wa_ids = [str(FIRST_WA_ID + user) for user in range(users) if seen[user]]
    write_started = time.perf_counter()
    with writer.begin() as conn:
        contact_count = write_head_and_contacts(conn, rows[-1], rng, wa_ids)
    tidy_started = time.perf_counter()
    writing += tidy_started - write_started
    tidy_after_load(engine)
    tidying = time.perf_counter() - tidy_started
    elapsed = time.perf_counter() - started
    print(
        f"populate     {events:,} events, {len(wa_ids):,} users, {contact_count:,} contacts in {elapsed:.1f} s "
        f"({events / elapsed:,.0f} events/s: building and hashing {elapsed - writing - tidying:.1f} s, "
        f"writing {writing:.1f} s, analyze {tidying:.1f} s)"
    )
    return wa_ids


# -- measuring ------------------------------------------------------------------------------


def timed_calls(call: Callable[[object], object], arguments: Sequence[object]) -> list[float]:
    """Latency in milliseconds of call(argument) for each argument, in order."""
    latencies = []
    for argument in arguments:
        started = time.perf_counter()
        call(argument)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def percentile(latencies: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(latencies)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def bench_state(ledger: Ledger, rng: random.Random, wa_ids: Sequence[str], lookups: int) -> None:
    for wa_id in rng.choices(wa_ids, k=min(WARMUP_LOOKUPS, lookups)):
        ledger.state(wa_id)
    latencies = timed_calls(ledger.state, rng.choices(wa_ids, k=lookups))
    p99 = percentile(latencies, 0.99)
    print(
        f"state        {lookups:,} look-ups: p50 {percentile(latencies, 0.5):.3f} ms, p99 {p99:.3f} ms, "
        f"max {max(latencies):.3f} ms    target p99 < {STATE_P99_TARGET_MS:g} ms: {verdict(p99 < STATE_P99_TARGET_MS)}"
    )


def live_drafts(rng: random.Random, wa_ids: Sequence[str], count: int, tag: str) -> list[EventDraft]:
    """New events for existing users, as the bot would record them now."""
    return [make_draft(rng, rng.choice(wa_ids), f"wamid.bench-{tag}-{i}", False, None) for i in range(count)]


def bench_append(ledger: Ledger, rng: random.Random, wa_ids: Sequence[str], appends: int) -> None:
    drafts = live_drafts(rng, wa_ids, appends, "single")
    started = time.perf_counter()
    latencies = timed_calls(ledger.append, drafts)
    rate = appends / (time.perf_counter() - started)
    print(
        f"append       {appends:,} events, 1 per commit: {rate:,.0f} events/s, p50 {percentile(latencies, 0.5):.2f} ms, "
        f"p99 {percentile(latencies, 0.99):.2f} ms    target >= {APPEND_RATE_TARGET:,} events/s: "
        f"{verdict(rate >= APPEND_RATE_TARGET)}"
    )


def bench_append_many(ledger: Ledger, rng: random.Random, wa_ids: Sequence[str], appends: int) -> None:
    drafts = live_drafts(rng, wa_ids, appends, "batch")
    started = time.perf_counter()
    for first in range(0, appends, APPEND_BATCH):
        ledger.append_many(drafts[first:first + APPEND_BATCH])
    rate = appends / (time.perf_counter() - started)
    print(
        f"append_many  {appends:,} events, {APPEND_BATCH} per commit: {rate:,.0f} events/s    "
        f"target >= {APPEND_RATE_TARGET:,} events/s: {verdict(rate >= APPEND_RATE_TARGET)}"
    )


def bench_verify(ledger: Ledger) -> None:
    started = time.perf_counter()
    result = ledger.verify()
    elapsed = time.perf_counter() - started
    outcome = "chain ok" if result.ok else f"BROKEN at seq {result.bad_seq}: {result.problem}"
    print(f"verify       {result.checked:,} events in {elapsed:.1f} s ({result.checked / elapsed:,.0f} events/s): {outcome}")


# -- backends -------------------------------------------------------------------------------


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as directory:
        yield f"sqlite:///{directory}/ledger.db"


@contextmanager
def postgresql_database() -> Iterator[str]:
    """The bench schema, emptied, reached through a search_path-setting URL."""
    admin = sa.create_engine(sa.make_url(POSTGRESQL_URL).set(query={}))
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {POSTGRESQL_SCHEMA} CASCADE")
        conn.exec_driver_sql(f"CREATE SCHEMA {POSTGRESQL_SCHEMA}")
    admin.dispose()
    yield POSTGRESQL_URL


BACKENDS = {"sqlite": sqlite_database, "postgresql": postgresql_database}


def run_backend(name: str, sizes: Sizes, verify: bool) -> None:
    with BACKENDS[name]() as url:
        engine = make_engine(url)
        try:
            print(f"== {name}: {engine.url.render_as_string(hide_password=True)}")
            load_at_start = os.getloadavg()[0]
            upgrade(engine)
            ledger, rng = Ledger(engine), random.Random(SEED)
            wa_ids = populate(engine, ledger, rng, sizes.events)
            bench_state(ledger, rng, wa_ids, sizes.lookups)
            bench_append(ledger, rng, wa_ids, sizes.appends)
            bench_append_many(ledger, rng, wa_ids, sizes.appends)
            if verify:
                bench_verify(ledger)
            # Other work on the machine skews every figure above; say how busy it was.
            print(f"machine      {os.cpu_count()} CPUs, 1-min load average {load_at_start:.2f} at start, "
                  f"{os.getloadavg()[0]:.2f} at end")
        finally:
            engine.dispose()
    print()


def positive_int(text: str) -> int:
    value = int(text.replace("_", "").replace(",", ""))
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: Sequence[str] | None = None) -> tuple[list[str], Sizes, bool]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument(
        "--quick", action="store_true",
        help=f"small preset for CI: {QUICK.events:,} events, {QUICK.lookups:,} look-ups, {QUICK.appends:,} appends",
    )
    parser.add_argument("--events", type=positive_int, help=f"events to populate (default {FULL.events:,})")
    parser.add_argument("--lookups", type=positive_int, help=f"timed state look-ups (default {FULL.lookups:,})")
    parser.add_argument(
        "--appends", type=positive_int, help=f"events appended in each append mode (default {FULL.appends:,})"
    )
    parser.add_argument("--verify", action="store_true", help="also time Ledger.verify() over the whole chain")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    sizes = Sizes(
        events=args.events or preset.events,
        lookups=args.lookups or preset.lookups,
        appends=args.appends or preset.appends,
    )
    backends = list(BACKENDS) if args.backend == "both" else [args.backend]
    return backends, sizes, args.verify


def main(argv: Sequence[str] | None = None) -> int:
    backends, sizes, verify = parse_args(argv)
    print(f"ledger benchmark: {sizes.events:,} events, {sizes.lookups:,} look-ups, {sizes.appends:,} appends per mode")
    for name in backends:
        run_backend(name, sizes, verify)
    return 0


if __name__ == "__main__":
    sys.exit(main())
