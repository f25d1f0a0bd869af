"""The bot started as README's Quickstart says (`python3 dev.py start`), on free ports with its
own SQLite file and Redis database, and a WhatsApp user who chats with it through the sandbox."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from bot.settings import PROJECT_ROOT
from tests.local_services import free_port

READY_LINE = "The bot is running."
ADMIN_TOKEN = "local-run-admin-token"


@dataclass
class RunningBot:
    process: subprocess.Popen
    web_url: str
    sandbox_url: str
    env: dict[str, str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def processes(self) -> set[int]:
        """devstack and every process under it."""
        return {self.process.pid} | descendants(self.process.pid)


@contextlib.contextmanager
def running_bot(tmp_path: Path, redis_url: str, **env: str) -> Iterator[RunningBot]:
    """Start the bot and wait until it says it runs; whatever happens, leave no process behind."""
    port, sandbox_port = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"), "PORT": str(port),
        "SANDBOX_PORT": str(sandbox_port), "DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}", "REDIS_URL": redis_url,
        "BUSINESS_NAME": "Acme Bakery", "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "WHATSAPP_TOKEN": "",  # set but empty, so that a developer's .env cannot turn the sandbox off
        **env,
    }
    log = tmp_path / "dev-start.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "dev.py", "start"], cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    bot = RunningBot(process, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sandbox_port}", env, log)
    try:
        deadline = time.monotonic() + 120
        while READY_LINE not in bot.output():
            assert process.poll() is None, f"dev.py start exited with {process.returncode}:\n{bot.output()[-3000:]}"
            assert time.monotonic() < deadline, f"the bot did not start:\n{bot.output()[-3000:]}"
            time.sleep(0.2)
        yield bot
    finally:
        if process.poll() is None:
            leftovers = bot.processes()
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()


def descendants(pid: int) -> set[int]:
    """Every process whose parent, grandparent, ... is `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # the process ended while we looked
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def still_running(pids: set[int], timeout: float = 10.0) -> set[int]:
    """Those of `pids` that are still there after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (alive := {pid for pid in pids if Path(f"/proc/{pid}").exists()}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


@dataclass
class SandboxUser:
    """A WhatsApp user, through the sandbox's JSON API (the one the chat page uses)."""

    sandbox_url: str
    wa_id: str

    def say(self, text: str, timeout: float = 20.0, quiet: float = 1.5) -> list[str]:
        """Send a text; return the bot's replies: those arriving until `quiet` seconds pass without another."""
        answer = requests.post(f"{self.sandbox_url}/api/chats/{self.wa_id}/messages", json={"text": text}, timeout=10)
        assert answer.status_code == 201, answer.text
        since, seen = answer.json()["message"]["at"], 0
        deadline, last_change = time.monotonic() + timeout, time.monotonic()
        while time.monotonic() < deadline:
            replies = [m["text"] for m in self.messages() if m["direction"] == "out" and m["at"] >= since]
            if len(replies) != seen:
                seen, last_change = len(replies), time.monotonic()
            elif replies and time.monotonic() - last_change >= quiet:
                return replies
            time.sleep(0.1)
        return replies

    def messages(self) -> list[dict]:
        return requests.get(f"{self.sandbox_url}/api/chats/{self.wa_id}", timeout=10).json()["messages"]

    def consent(self) -> dict:
        return requests.get(f"{self.sandbox_url}/api/chats/{self.wa_id}", timeout=10).json()["consent"]
