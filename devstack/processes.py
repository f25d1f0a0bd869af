"""The processes of a local run: each in a process group of its own, its output shown with its
name, and all of them stopped together, leaving nothing behind.

A group per process means one signal reaches a process and everything it started (gunicorn's
workers), and a Ctrl-C in the terminal reaches only devstack, which stops the others in order.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    relay: threading.Thread

    def group_alive(self) -> bool:
        """Is any process of its group still there (the leader reaped or not)?"""
        self.process.poll()
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # the group id was taken by someone else's process
            return False
        return True

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


class Supervisor:
    def __init__(self, cwd: Path, out: TextIO = sys.stdout):
        self.cwd = cwd
        self.out = out
        self.children: list[Child] = []
        self._print = threading.Lock()

    def say(self, line: str) -> None:
        with self._print:
            self.out.write(line + "\n")
            self.out.flush()

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        process = subprocess.Popen(
            argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, text=True, errors="replace", bufsize=1,
        )
        relay = threading.Thread(target=self._relay, args=(name, process.stdout), name=f"relay-{name}", daemon=True)
        relay.start()
        child = Child(name, process, relay)
        self.children.append(child)
        return child

    def exited(self) -> Child | None:
        """The first child that is no longer running, if any."""
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self, children: list[Child], timeout: float, hurry: threading.Event) -> None:
        """SIGTERM each group, wait up to `timeout` (less once `hurry` is set), then SIGKILL what is left."""
        for child in children:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(c.group_alive() for c in children) and time.monotonic() < deadline and not hurry.is_set():
            time.sleep(0.1)
        for child in children:
            if child.group_alive():
                self.say(f"devstack: {child.name} did not stop in time; killing it")
                child.signal_group(signal.SIGKILL)
        reaped_by = time.monotonic() + 5  # killed members of a group are reaped by their parent, or by init
        for child in children:
            child.process.wait()
            while child.group_alive() and time.monotonic() < reaped_by:
                time.sleep(0.05)
            child.relay.join(timeout=2)

    def _relay(self, name: str, stream: TextIO) -> None:
        for line in stream:
            self.say(f"{name:<8}| {line.rstrip()}")
