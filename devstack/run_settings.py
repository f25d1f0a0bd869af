"""The settings of the local run that is going, for `python3 dev.py flask`: `dev.py start` keeps
them in instance/local-run.json (its database, the Redis it found or started, the sandbox's Graph
API URL and keys, every other setting as its processes got it) and removes the file as it stops.

Only dev.py reads the file: `flask` started any other way, as in production, never sees it.
Standard library only: dev.py imports this before the virtualenv exists.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

RUN_FILE = Path(__file__).resolve().parent.parent / "instance" / "local-run.json"

RunSettings = dict[str, str | None]  # variable name -> value, None where the run did not have it set


def record(settings: Mapping[str, str | None], path: Path = RUN_FILE) -> int | None:
    """Keep this process's run's settings, readable by its owner only (they hold the run's keys).
    When another run is going in this checkout, its file stays and its pid is returned."""
    other = going(path)
    if other is not None and other[0] != os.getpid():
        return other[0]
    path.parent.mkdir(exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    with os.fdopen(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        json.dump({"pid": os.getpid(), "settings": dict(settings)}, file)
    os.replace(draft, path)
    return None


def forget(path: Path = RUN_FILE) -> None:
    """Remove the file, if this process wrote it."""
    if _read(path).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def going(path: Path = RUN_FILE) -> tuple[int, RunSettings] | None:
    """The pid and settings of the local run that is going; None when there is no file, or only
    one left by a run that could not remove it (killed)."""
    kept = _read(path)
    pid, settings = kept.get("pid"), kept.get("settings")
    if not isinstance(pid, int) or not isinstance(settings, dict) or not _alive(pid):
        return None
    return pid, settings


def _read(path: Path) -> dict:
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return kept if isinstance(kept, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:  # gone, or the number now names another user's process
        return False
    return True
