"""The local run's settings file (devstack/run_settings.py): kept while its run goes, for
`python3 dev.py flask`, and never taken from a run that ended or from another run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from bot.settings import PROJECT_ROOT
from dev import with_run_settings
from devstack import run_settings
from devstack.__main__ import _setting_names

SETTINGS = {"DATABASE_URL": "sqlite:///run.db", "REDIS_URL": "redis://127.0.0.1:40001/0", "SECRET_KEY": None}


def test_a_run_keeps_its_settings_for_its_owner_only_until_it_forgets_them(tmp_path):
    path = tmp_path / "instance" / "local-run.json"
    assert run_settings.going(path) is None
    assert run_settings.record(SETTINGS, path) is None
    assert run_settings.going(path) == (os.getpid(), SETTINGS)
    assert path.stat().st_mode & 0o777 == 0o600  # it holds the run's keys
    run_settings.forget(path)
    assert not path.exists() and run_settings.going(path) is None


def test_the_file_of_a_run_that_ended_without_removing_it_is_not_used(tmp_path):
    path = tmp_path / "local-run.json"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    path.write_text(json.dumps({"pid": int(ended.stdout), "settings": {"REDIS_URL": "redis://127.0.0.1:40001/0"}}))
    assert run_settings.going(path) is None
    assert run_settings.record(SETTINGS, path) is None  # a new run takes its place
    assert run_settings.going(path) == (os.getpid(), SETTINGS)


def test_another_run_that_is_going_keeps_its_file(tmp_path):
    path = tmp_path / "local-run.json"
    other = {"pid": os.getppid(), "settings": {"REDIS_URL": "redis://127.0.0.1:40002/0"}}  # a live process, not this one
    path.write_text(json.dumps(other))
    assert run_settings.record(SETTINGS, path) == other["pid"]
    run_settings.forget(path)
    assert run_settings.going(path) == (other["pid"], other["settings"])


def test_every_setting_is_kept_under_the_variable_the_bot_reads_it_from():
    """A run keeps each Settings field under its name in capitals: that must be its variable."""
    source = (PROJECT_ROOT / "bot" / "settings.py").read_text()
    names = _setting_names()
    assert {"DATABASE_URL", "REDIS_URL", "GRAPH_API_URL", "WHATSAPP_TOKEN", "WHATSAPP_APP_SECRET"} <= set(names)
    assert [name for name in names if f'"{name}"' not in source] == []


def test_dev_py_flask_takes_the_runs_settings_over_the_shells_or_the_shells_without_a_run():
    shell = {"PATH": "/usr/bin", "DATABASE_URL": "sqlite:///elsewhere.db", "SECRET_KEY": "the-shells", "PORT": "9000"}
    assert with_run_settings(shell, (4321, SETTINGS)) == {
        "PATH": "/usr/bin", "DATABASE_URL": "sqlite:///run.db", "REDIS_URL": "redis://127.0.0.1:40001/0", "PORT": "9000",
    }  # SECRET_KEY: the run had none, so flask makes do as the run did
    assert with_run_settings(shell, None) == shell
