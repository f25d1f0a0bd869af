"""Developer entry point, needing only Python 3.11+.

    python3 dev.py start            run the whole bot: upgrade the database schema, then web, worker,
                                    Redis if none answers, and the WhatsApp sandbox unless
                                    WHATSAPP_TOKEN is set (python -m devstack)
    python3 dev.py flask ARGS...    a staff command (flask --app wsgi ARGS, e.g. `campaign list`) against
                                    the local run that is going: its database, Redis and settings, which
                                    `start` keeps in instance/local-run.json while it runs; with none
                                    going, it says so and uses the environment and .env, as flask does
    python3 dev.py test [options]   run the test suite (options go to pytest) in two processes
                                    (`-n 0`: in one); first starts or installs PostgreSQL, Redis
                                    and Chromium (devstack/services.sh), except for `-m unit`,
                                    the tests that need none of them
    python3 dev.py lint             ruff and mypy
    python3 dev.py bench            run the benchmarks in their short form (bench/*.py --quick)

It keeps a virtualenv in .venv in step with the pinned requirements, then runs the command in it.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from collections.abc import Mapping
from pathlib import Path

from devstack import run_settings

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"


def ensure_virtualenv(requirements: str) -> None:
    """Create .venv and install `requirements` when they changed since the last install."""
    files = sorted(ROOT.glob("requirements*.txt"))  # one file may include another
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in files)).hexdigest()
    stamp = VENV / f".installed-{requirements}"  # one stamp per file: start and test install different sets
    if stamp.exists() and stamp.read_text() == digest:
        return
    if not PYTHON.exists():
        print(f"creating virtualenv in {VENV.name}/", flush=True)
        venv.create(VENV, with_pip=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(ROOT / requirements)], check=True)
    stamp.write_text(digest)


def only_unit_tests(pytest_args: list[str]) -> bool:
    """`-m unit` selects the tests that need no database server, Redis or browser."""
    return any(arg == "-m" and value == "unit" for arg, value in zip(pytest_args, pytest_args[1:])) or "-munit" in pytest_args


def with_run_settings(environ: Mapping[str, str], run: tuple[int, run_settings.RunSettings] | None) -> dict[str, str]:
    """`environ` with the settings of the local run that is going (its pid and settings) in place of
    its own, so that flask reaches the run's database and Redis; `environ` as it is without one."""
    env = dict(environ)
    for name, value in (run[1] if run else {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


TEST_WORKERS = 2  # pytest-xdist processes: the suite waits on servers and processes as much as it computes


def parallel(pytest_args: list[str]) -> list[str]:
    """pytest-xdist's options to run the suite in TEST_WORKERS processes, each with its own
    PostgreSQL schema and Redis database (tests/local_services.py); tests of one `xdist_group`
    run in the same process. None when the options given choose otherwise (`-n 0` runs in one
    process, `-p no:xdist` without the plugin) or need one process (--pdb, --trace)."""
    if any(arg.startswith(("-n", "--numprocesses", "--pdb", "--trace")) or arg.endswith("no:xdist") for arg in pytest_args):
        return []
    return ["-n", str(TEST_WORKERS), "--dist", "loadgroup"]


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    os.chdir(ROOT)
    if command == "test":
        ensure_virtualenv("requirements-dev.txt")
        if not only_unit_tests(argv[1:]) and subprocess.run(["bash", str(ROOT / "devstack" / "services.sh")]).returncode:
            print("dev.py: some services are missing (above); the tests that need them will fail", file=sys.stderr, flush=True)
        os.execv(PYTHON, [str(PYTHON), "-m", "pytest", *parallel(argv[1:]), *argv[1:]])
    if command == "lint":
        ensure_virtualenv("requirements-dev.txt")
        ruff = subprocess.run([str(VENV / "bin" / "ruff"), "check", "."]).returncode
        mypy = subprocess.run([str(PYTHON), "-m", "mypy"]).returncode
        return 1 if ruff or mypy else 0
    if command == "bench":
        ensure_virtualenv("requirements-dev.txt")
        for script in (
            "bench/keyword_score.py", "bench/ledger.py", "bench/send_throughput.py", "bench/webhook_load.py", "bench/slow_clients.py",
            "bench/export_memory.py", "bench/soak.py", "bench/forwarding.py",
        ):
            subprocess.run([str(PYTHON), script, "--quick"], check=True)
        return 0
    if command == "start":
        ensure_virtualenv("requirements-local.txt")
        os.execv(PYTHON, [str(PYTHON), "-m", "devstack"])
    if command == "flask":
        ensure_virtualenv("requirements-local.txt")  # the one `start` keeps
        run = run_settings.going()
        print(
            f"dev.py: flask runs against the local run (pid {run[0]}): its database, Redis and settings" if run else
            "dev.py: no local run is going (`python3 dev.py start`): flask uses this environment and .env",
            file=sys.stderr, flush=True,
        )
        os.execve(PYTHON, [str(PYTHON), "-m", "flask", "--app", "wsgi", *argv[1:]], with_run_settings(os.environ, run))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
