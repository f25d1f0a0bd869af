"""Developer entry point, needing only Python 3.11+.

    python3 dev.py start            run the whole bot: web, worker, Redis if none answers, and the
                                    WhatsApp sandbox unless WHATSAPP_TOKEN is set (python -m devstack)
    python3 dev.py test [options]   run the test suite (options go to pytest)
    python3 dev.py bench            run the benchmarks in their short form (bench/*.py --quick)

It keeps a virtualenv in .venv in step with the pinned requirements, then runs the command in it.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

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


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    os.chdir(ROOT)
    if command == "test":
        ensure_virtualenv("requirements-dev.txt")
        os.execv(PYTHON, [str(PYTHON), "-m", "pytest", *argv[1:]])
    if command == "bench":
        ensure_virtualenv("requirements-dev.txt")
        for script in ("bench/ledger.py", "bench/send_throughput.py", "bench/webhook_load.py", "bench/export_memory.py", "bench/soak.py"):
            subprocess.run([str(PYTHON), script, "--quick"], check=True)
        return 0
    if command == "start":
        ensure_virtualenv("requirements-local.txt")
        os.execv(PYTHON, [str(PYTHON), "-m", "devstack"])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
