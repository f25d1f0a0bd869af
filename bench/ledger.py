"""Benchmark of the consent ledger (bot/storage/ledger.py) on SQLite and PostgreSQL.

For each backend it measures:

1. populate: bulk-loads N hash-chained events (default 1,000,000) over about N/10 people, with a
   realistic mix of actions, plus the people's `identities` rows and
   `contacts` rows (by person) for half of them. People are known by identifiers of every kind:
   a third by a phone number (wa_id) only, a third by a BSUID only (`US.` and 20 digits), a
   third by both, linked: their events are spread over both identifiers, and their first one
   comes with the `identity_linked` event that links the BSUID to the phone (channel
   whatsapp_identity, as bot.storage.people records it). Rows are built by the ledger's own
   `_prepare` and hashed with `event_hash` (hash version 3, keyed with BENCH_KEY) in seq
   order, exactly as `extend_chain` does, so the chain is valid (check it with --verify).
   Events are written with executemany on SQLite and COPY on PostgreSQL, in transactions of
   100,000 events.
2. state: warm `Ledger.state(identifier)` look-ups of random existing identifiers of every kind
   (a phone-only or BSUID-only person's, a linked person's phone or BSUID): p50, p99 and max,
   overall and for each kind. Each warm-up look-up checks that it found the right person.
3. append: single-event `Ledger.append` calls for existing people under any of their
   identifiers (the ledger finds the person), each its own durable commit (events/s, p50,
   p99), then `Ledger.append_many` in batches of 50 (events/s).
4. verify (only with --verify): `Ledger.verify()` over the whole chain.

Targets: state p99 < 1 ms at 1,000,000 events; >= 1,000 appended events/s from one process
with durable commits. It is a measurement, not a test: it exits 0 whatever the results,
non-zero only on a crash.

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
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import Connection, Engine  # noqa: E402

from bot.domain.consent import Action, Channel, EventDraft, Scope  # noqa: E402
from bot.domain.identity import kind_of  # noqa: E402
from bot.storage import people as identity_events  # noqa: E402
from bot.storage.db import WRITE_OPTION, make_engine  # noqa: E402
from bot.storage.integrity import LedgerKey  # noqa: E402
from bot.storage.ledger import Ledger, event_hash, utc_now  # noqa: E402
from bot.storage.migrate import upgrade  # noqa: E402
from bot.storage.schema import GENESIS_HASH, consent_events, contacts, identities, ledger_head  # noqa: E402

T = TypeVar("T")

BENCH_KEY = LedgerKey("bench-only-ledger-signing-key-not-a-secret")
POSTGRESQL_SCHEMA = "bench_ledger"
POSTGRESQL_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{POSTGRESQL_SCHEMA}"

STATE_P99_TARGET_MS = 1.0
APPEND_RATE_TARGET = 1_000
APPEND_BATCH = 50
POPULATE_CHUNK = 100_000
WARMUP_LOOKUPS = 1_000
FIRST_WA_ID = 15_550_000_000
FIRST_BSUID = 13_491_208_655_302_700_000  # 20 digits, after "US."
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


# -- synthetic people and events ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Person:
    """A person and the identifiers they are known by: a phone, a BSUID, or both (linked)."""

    person_id: str
    phone: str | None
    bsuid: str | None

    @property
    def identifiers(self) -> tuple[str, ...]:
        return tuple(i for i in (self.phone, self.bsuid) if i is not None)

    def labelled(self) -> list[tuple[str, str]]:
        """(kind, identifier) for each identifier, the kind as the state report names it."""
        if self.phone and self.bsuid:
            return [("linked, by phone", self.phone), ("linked, by BSUID", self.bsuid)]
        return [("phone only", self.phone)] if self.phone else [("BSUID only", self.bsuid or "")]


def make_people(rng: random.Random, count: int) -> list[Person]:
    """`count` people: by turns phone-only, BSUID-only and both (so a third of each)."""
    people = []
    for index in range(count):
        kind = index % 3
        people.append(Person(
            person_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            phone=str(FIRST_WA_ID + index) if kind != 1 else None,
            bsuid=f"US.{FIRST_BSUID + index}" if kind != 0 else None,
        ))
    return people


def make_draft(rng: random.Random, identifier: str, ref: str, first: bool, occurred_at: datetime | None) -> EventDraft:
    """One plausible event under an identifier; `ref` (a message or request id) makes its source_ref unique."""
    if first:
        action = Action.IMPLICIT if rng.random() < 0.75 else Action.OPT_IN
    else:
        action = rng.choices(LATER_ACTIONS, LATER_WEIGHTS)[0]
    if action is Action.IMPLICIT:
        return EventDraft(
            identifier, action, Channel.WHATSAPP_SESSION, f"implicit:{ref}", "webhook",
            evidence={"message_id": ref}, occurred_at=occurred_at,
        )
    if action is Action.OPT_IN:
        channel = Channel.WEB if first else rng.choice(OPT_IN_CHANNELS)
        evidence = {"form": "signup-v3", "ip": f"203.0.113.{rng.randrange(256)}", "user_agent": USER_AGENT, "ref": ref}
        return EventDraft(
            identifier, action, channel, f"opt_in:{ref}", "staff:frontdesk",
            consent_text=CONSENT_TEXT, evidence=evidence, occurred_at=occurred_at,
        )
    if action is Action.OPT_OUT:
        scope = Scope.ALL if rng.random() < 0.7 else Scope.MARKETING
        return EventDraft(
            identifier, action, Channel.WHATSAPP_KEYWORD, f"opt_out:{ref}", "webhook", scope=scope,
            evidence={"message_id": ref, "keyword": "STOP"}, occurred_at=occurred_at,
        )
    return EventDraft(
        identifier, action, Channel.WHATSAPP_DELIVERY, f"notice:{ref}", "webhook",
        evidence={"message_id": ref, "template": "welcome_stop_notice"}, occurred_at=occurred_at,
    )


def person_drafts(rng: random.Random, person: Person, ref: str, first: bool, occurred_at: datetime) -> list[EventDraft]:
    """A person's next event, under one of their identifiers; before a linked person's first,
    the identity_linked event that ties their BSUID to their phone (Meta showed both in `ref`)."""
    drafts = []
    if first and person.phone and person.bsuid:
        drafts.append(identity_events._event(
            Action.IDENTITY_LINKED, person.bsuid, person.person_id, ref, occurred_at, seen_with=[person.phone]
        ))
    identifier = rng.choice(person.identifiers)
    drafts.append(replace(make_draft(rng, identifier, ref, first, occurred_at), person_id=person.person_id))
    return drafts


def chained_rows(
    ledger: Ledger, rng: random.Random, events: int, people: Sequence[Person], first_seen: list[datetime | None]
) -> Iterator[list[dict]]:
    """Yield the ledger's rows in seq order, in chunks, hash-chained from the genesis hash.

    Events are spread evenly over the past year, each for a random person; `first_seen` gets
    the time of each person's first event.
    """
    step = timedelta(days=365) / events
    start = utc_now() - timedelta(days=366)
    prev_hash: str | None = GENESIS_HASH
    chunk: list[dict] = []
    seq = 0
    while seq < events:
        index = rng.randrange(len(people))
        occurred_at = start + step * (seq + 1)
        drafts = person_drafts(rng, people[index], f"wamid.HBgL{seq + 1:012d}", first_seen[index] is None, occurred_at)
        if first_seen[index] is None:
            first_seen[index] = occurred_at
        recorded_at = occurred_at + timedelta(microseconds=rng.randrange(2_000_000))
        for draft in drafts[: events - seq]:  # no room for both at the very end: the link alone
            seq += 1
            # The ledger's own row layout and checks (private, so that the two cannot drift apart),
            # chained and hashed as Ledger.extend_chain does.
            row = ledger._prepare(draft, recorded_at)
            row.update(seq=seq, prev_hash=prev_hash)
            row["hash"] = prev_hash = event_hash(row, ledger.key.chain)
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
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor:
        with cursor.copy(f"COPY consent_events ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[name] for name in columns])


def write_people(conn: Connection, people: Sequence[Person], first_seen: Sequence[datetime | None]) -> int:
    """Each person with events: their identifiers (linked when first seen). Returns the identities written."""
    seen = [(person, at) for person, at in zip(people, first_seen, strict=True) if at is not None]
    rows = [
        {"identifier": identifier, "person_id": person.person_id, "kind": kind_of(identifier).value, "linked_at": at}
        for person, at in seen for identifier in person.identifiers
    ]
    for first in range(0, len(rows), POPULATE_CHUNK):
        conn.execute(identities.insert(), rows[first:first + POPULATE_CHUNK])
    return len(rows)


def write_head_and_contacts(conn: Connection, head: dict, rng: random.Random, people: Sequence[Person]) -> int:
    """Point the chain head at the last event; give every other person a last inbound message in
    the past 48 hours (so about a quarter of people have an open window). Returns the contacts written."""
    conn.execute(ledger_head.update().where(ledger_head.c.id == 1).values(seq=head["seq"], hash=head["hash"]))
    now = utc_now()
    rows = [
        {"person_id": person.person_id, "last_inbound_at": now - timedelta(seconds=rng.randrange(48 * 3600))}
        for person in people[::2]
    ]
    conn.execute(contacts.insert(), rows)
    return len(rows)


def tidy_after_load(engine: Engine) -> None:
    """What a database would have done by itself after a load: fresh statistics, checkpointed WAL."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE consent_events, identities, contacts, ledger_head")
        return
    connection = engine.raw_connection()  # autocommit mode (see make_engine): no BEGIN around these
    try:
        cursor = connection.cursor()
        cursor.execute("ANALYZE")
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cursor.close()
    finally:
        connection.close()


def populate(engine: Engine, ledger: Ledger, rng: random.Random, events: int) -> list[Person]:
    """Load the ledger, its head, the people and some contacts, print the time, and return the people who have events."""
    people = make_people(rng, max(1, events // 10))
    first_seen: list[datetime | None] = [None] * len(people)
    writer = engine.execution_options(**{WRITE_OPTION: True})
    started, writing = time.perf_counter(), 0.0
    for rows in chained_rows(ledger, rng, events, people, first_seen):
        write_started = time.perf_counter()
        with writer.begin() as conn:
            write_events(conn, rows)
        writing += time.perf_counter() - write_started
    seen = [person for person, at in zip(people, first_seen, strict=True) if at is not None]
    write_started = time.perf_counter()
    with writer.begin() as conn:
        identity_count = write_people(conn, people, first_seen)
        contact_count = write_head_and_contacts(conn, rows[-1], rng, seen)
    tidy_started = time.perf_counter()
    writing += tidy_started - write_started
    tidy_after_load(engine)
    tidying = time.perf_counter() - tidy_started
    elapsed = time.perf_counter() - started
    linked = sum(1 for person in seen if person.phone and person.bsuid)
    print(
        f"populate     {events:,} events, {len(seen):,} people ({linked:,} with phone and BSUID linked), "
        f"{identity_count:,} identities, {contact_count:,} contacts in {elapsed:.1f} s "
        f"({events / elapsed:,.0f} events/s: building and hashing {elapsed - writing - tidying:.1f} s, "
        f"writing {writing:.1f} s, analyze {tidying:.1f} s)"
    )
    return seen


# -- measuring ------------------------------------------------------------------------------


def timed_calls(call: Callable[[T], object], arguments: Sequence[T]) -> list[float]:
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


def bench_state(ledger: Ledger, rng: random.Random, people: Sequence[Person], lookups: int) -> None:
    """Look-ups by identifiers of every kind, each as likely (a linked person has two)."""
    labelled = [(label, identifier, person) for person in people for label, identifier in person.labelled()]
    for _, identifier, person in rng.choices(labelled, k=min(WARMUP_LOOKUPS, lookups)):
        found = ledger.state(identifier)
        if found.person_id != person.person_id or found.identifiers != person.identifiers:
            raise RuntimeError(f"state({identifier}) found {found.person_id} {found.identifiers}, not {person}")
    picked = rng.choices(labelled, k=lookups)
    latencies = timed_calls(ledger.state, [identifier for _, identifier, _ in picked])
    p99 = percentile(latencies, 0.99)
    print(
        f"state        {lookups:,} look-ups: p50 {percentile(latencies, 0.5):.3f} ms, p99 {p99:.3f} ms, "
        f"max {max(latencies):.3f} ms    target p99 < {STATE_P99_TARGET_MS:g} ms: {verdict(p99 < STATE_P99_TARGET_MS)}"
    )
    by_kind: dict[str, list[float]] = {}
    for (label, _, _), latency in zip(picked, latencies, strict=True):
        by_kind.setdefault(label, []).append(latency)
    print("  by kind    " + "; ".join(
        f"{label} ({len(found):,}): p50 {percentile(found, 0.5):.3f} ms, p99 {percentile(found, 0.99):.3f} ms"
        for label, found in sorted(by_kind.items())
    ))


def live_drafts(rng: random.Random, people: Sequence[Person], count: int, tag: str) -> list[EventDraft]:
    """New events for existing people, under any of their identifiers, as the bot would record
    them now: without a person, which the ledger finds."""
    return [
        make_draft(rng, rng.choice(rng.choice(people).identifiers), f"wamid.bench-{tag}-{i}", False, None)
        for i in range(count)
    ]


def bench_append(ledger: Ledger, rng: random.Random, people: Sequence[Person], appends: int) -> None:
    drafts = live_drafts(rng, people, appends, "single")
    started = time.perf_counter()
    latencies = timed_calls(ledger.append, drafts)
    rate = appends / (time.perf_counter() - started)
    print(
        f"append       {appends:,} events, 1 per commit: {rate:,.0f} events/s, p50 {percentile(latencies, 0.5):.2f} ms, "
        f"p99 {percentile(latencies, 0.99):.2f} ms    target >= {APPEND_RATE_TARGET:,} events/s: "
        f"{verdict(rate >= APPEND_RATE_TARGET)}"
    )


def bench_append_many(ledger: Ledger, rng: random.Random, people: Sequence[Person], appends: int) -> None:
    drafts = live_drafts(rng, people, appends, "batch")
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
            ledger, rng = Ledger(engine, key=BENCH_KEY), random.Random(SEED)
            people = populate(engine, ledger, rng, sizes.events)
            bench_state(ledger, rng, people, sizes.lookups)
            bench_append(ledger, rng, people, sizes.appends)
            bench_append_many(ledger, rng, people, sizes.appends)
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
