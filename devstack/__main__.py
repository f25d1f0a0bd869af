"""`python -m devstack`, which `python3 dev.py start` runs: the whole bot on this machine.

It brings the database schema up to date (`flask db upgrade`, the Procfile's release step), then
starts what the Procfile runs, a web process (gunicorn, on 127.0.0.1:$PORT) and a worker
(`python -m bot.outbound.worker`), and what they need: Redis (the one at REDIS_URL when it answers,
otherwise an embedded redis-server that lives as long as the run) and the ledger (DATABASE_URL,
by default the SQLite file under instance/). Without WHATSAPP_TOKEN it also starts the WhatsApp
sandbox (`python -m sandbox serve`, on $SANDBOX_PORT) and points the bot's Graph API URL, token, phone
number id and app secret at it; with WHATSAPP_TOKEN set the bot talks to Meta and no sandbox runs.
While it runs, `python3 dev.py flask ...` reaches it: its settings are in instance/local-run.json
(devstack/run_settings.py). Ctrl-C (SIGINT) or SIGTERM stops everything it started; a second one
stops it at once.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping

import redis
import requests
from rq import Worker
from sqlalchemy.engine import make_url

from bot.domain.identity import mask
from bot.domain.staff import Role
from bot.services import STARTUP_ERRORS
from bot.settings import PROJECT_ROOT, Settings, load_settings, masked_url
from bot.storage.db import make_engine
from bot.storage.migrate import upgrade
from bot.storage.staff import StaffAccounts
from devstack import embedded_redis, run_settings
from devstack.processes import Child, Supervisor

SANDBOX_PHONE_NUMBER_ID = "100000000000001"
SANDBOX_BUSINESS_ACCOUNT_ID = "100000000000002"
LOCAL_ADMIN = "admin@example.com"  # the console account a local run makes when there is none
EXAMPLE_HANDLERS = "examples.opening_hours"  # the handlers a sandboxed local run loads when BOT_HANDLERS is not set
READY_TIMEOUT = 90.0  # seconds; a first start on a busy 2-core machine takes a while
STOP_TIMEOUT = 20.0  # seconds each process gets to finish what it is doing


def main() -> int:
    try:
        settings = load_settings()  # reads .env into the environment the processes get
        _upgrade_schema(settings)
        first_admin = _first_admin(settings)
    except STARTUP_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    env = dict(os.environ, DATABASE_URL=settings.database_url)
    port, sandbox_port = settings.port, settings.sandbox_port
    supervisor = Supervisor(PROJECT_ROOT)
    stopping, hurry = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame) -> None:
        (hurry if stopping.is_set() else stopping).set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with tempfile.TemporaryDirectory(prefix="devstack-redis-") as redis_dir:
        redis_child: Child | None = None
        try:
            redis_child = _redis(env, supervisor, redis_dir)
            return _run(env, port, sandbox_port, supervisor, stopping, embedded=redis_child is not None, first_admin=first_admin)
        finally:
            run_settings.forget()  # from now on `dev.py flask` says no local run is going
            supervisor.say("devstack: stopping")
            supervisor.stop([c for c in supervisor.children if c is not redis_child], STOP_TIMEOUT, hurry)
            if redis_child:
                supervisor.stop([redis_child], STOP_TIMEOUT, hurry)
            supervisor.say("devstack: stopped")


def _upgrade_schema(settings: Settings) -> None:
    """What the Procfile's release step does: no process changes the schema at start."""
    engine = make_engine(settings.database_url)
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    if before != after:
        print(f"devstack: database schema upgraded from {before or 'none'} to {after}", flush=True)


def _first_admin(settings: Settings) -> tuple[str, str] | None:
    """An admin account for the local run's console when the database has no staff account yet:
    (email, one-time password), to print once; it must be changed at the first sign-in."""
    engine = make_engine(settings.database_url)
    try:
        accounts = StaffAccounts(engine)
        if accounts.all():
            return None
        account, one_time = accounts.add(LOCAL_ADMIN, Role.ADMIN, created_by="dev.py start")
        return account.email, one_time
    finally:
        engine.dispose()


def _redis(env: dict[str, str], supervisor: Supervisor, directory: str) -> Child | None:
    """Use the Redis at REDIS_URL when it answers; otherwise start one and point REDIS_URL at it."""
    given = env.get("REDIS_URL")
    env["REDIS_URL"] = given or "redis://127.0.0.1:6379/0"
    if embedded_redis.answers(env["REDIS_URL"]):
        return None
    if given:  # the user asked for that one: say why another is used
        supervisor.say(f"devstack: nothing answers at REDIS_URL={masked_url(given)}; starting an embedded redis-server instead")
    port = embedded_redis.free_port()
    child = supervisor.start("redis", embedded_redis.server_command(port, directory), env)
    env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not embedded_redis.answers(env["REDIS_URL"]):
        if child.process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("error: the embedded redis-server did not start")
        time.sleep(0.1)
    return child


def _run(
    env: dict[str, str], port: int, sandbox_port: int, supervisor: Supervisor, stopping: threading.Event, embedded: bool,
    first_admin: tuple[str, str] | None,
) -> int:
    web_url, sandbox_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sandbox_port}"
    sandboxed = not env.get("WHATSAPP_TOKEN")
    if sandboxed:
        env.update(
            GRAPH_API_URL=sandbox_url, WHATSAPP_TOKEN=f"sandbox-{secrets.token_hex(16)}",
            WHATSAPP_PHONE_NUMBER_ID=SANDBOX_PHONE_NUMBER_ID, WHATSAPP_APP_SECRET=secrets.token_hex(32),
            WHATSAPP_BUSINESS_ACCOUNT_ID=SANDBOX_BUSINESS_ACCOUNT_ID,  # sends are decided on the sandbox's template catalog
        )
        env.setdefault("BOT_HANDLERS", EXAMPLE_HANDLERS)  # never against Meta: real customers would get the example's answers
        supervisor.start("sandbox", [sys.executable, "-m", "sandbox", "serve", "--port", str(sandbox_port), "--bot-url", web_url], env)
    other = run_settings.record({name: env.get(name) for name in _setting_names()})
    if other is not None:
        supervisor.say(f"devstack: another local run (pid {other}) is going in this checkout: `python3 dev.py flask` reaches that one")
    supervisor.start("web", [  # processes and threads from gunicorn.conf.py, as in production
        sys.executable, "-m", "gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{port}", "--no-control-socket", "--access-logfile", "-",
    ], env)
    worker = supervisor.start("worker", [sys.executable, "-m", "bot.outbound.worker"], env)
    ready = [f"{web_url}/healthz"] + ([f"{sandbox_url}/healthz"] if sandboxed else [])
    problem = _wait_until_ready(supervisor, ready, env["REDIS_URL"], worker.process.pid, stopping)
    if problem:
        supervisor.say(f"devstack: {problem}")
        return 0 if stopping.is_set() else 1
    supervisor.say(_banner(env, web_url, sandbox_url if sandboxed else None, embedded, first_admin))
    while not stopping.wait(0.5):
        if (child := supervisor.exited()) is not None:
            supervisor.say(f"devstack: {child.name} exited with code {child.process.returncode}; stopping everything")
            return 1
    return 0


def _wait_until_ready(
    supervisor: Supervisor, urls: list[str], redis_url: str, worker_pid: int, stopping: threading.Event
) -> str | None:
    """None once every URL answers 200 and the worker listens on Redis; otherwise why not."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if stopping.is_set():
            return "stopped before the bot was ready"
        if (child := supervisor.exited()) is not None:
            return f"{child.name} exited with code {child.process.returncode} before the bot was ready"
        if all(_answers(url) for url in urls) and _worker_listens(redis_url, worker_pid):
            return None
        time.sleep(0.3)
    return f"the bot was not ready after {READY_TIMEOUT:.0f} s"


def _setting_names() -> list[str]:
    """The variables the bot's settings come from: each is its Settings field's name in capitals."""
    return [field.name.upper() for field in dataclasses.fields(Settings)]


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _worker_listens(redis_url: str, pid: int) -> bool:
    with redis.Redis.from_url(redis_url) as connection:
        return any(worker.pid == pid for worker in Worker.all(connection=connection))


def _banner(env: Mapping[str, str], web_url: str, sandbox_url: str | None, embedded: bool, first_admin: tuple[str, str] | None) -> str:
    redis_url = make_url(env["REDIS_URL"]).render_as_string(hide_password=True)
    lines = [
        "",
        "The bot is running." + (" No WHATSAPP_TOKEN: the WhatsApp sandbox stands in for Meta." if sandbox_url else
                                 f" It talks to Meta's Cloud API as phone number id {mask(env.get('WHATSAPP_PHONE_NUMBER_ID', ''))}."),
        f"  web       {web_url}   (webhook {web_url}/webhook, health {web_url}/healthz)",
    ]
    if sandbox_url:
        where = "" if sandbox_url.endswith(":8001") else f"SANDBOX_URL={sandbox_url} "
        lines += [
            f"  sandbox   {sandbox_url}   chat with the bot as a WhatsApp user",
            f"            or from a shell: {where}.venv/bin/python -m sandbox simulate \"hello\" --from 15550100001",
        ]
    lines.append(f"  console   {web_url}/console   staff console")
    if first_admin:
        email, one_time = first_admin
        lines.append(f"            sign in as {email} with the one-time password {one_time} (shown this once; you choose your own)")
    else:
        lines.append("            its accounts: python3 dev.py flask staff list; another: python3 dev.py flask staff add EMAIL --role admin")
    if env.get("BOT_HANDLERS"):
        lines.append(f"  handlers  {env['BOT_HANDLERS']}   (BOT_HANDLERS: ask the sandbox \"are you open on Sunday?\")")
    if env.get("FORWARD_URL"):
        lines.append(f"  forward   {masked_url(env['FORWARD_URL'])}   (python3 dev.py flask forward status)")
    lines += [
        "  worker    python -m bot.outbound.worker",
        f"  redis     {redis_url}" + ("   (embedded, stops with the bot)" if embedded else ""),
        f"  database  {make_url(env['DATABASE_URL']).render_as_string(hide_password=True)}",
        "  staff     python3 dev.py flask campaign list   (any flask command, against this run's database and Redis)",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
