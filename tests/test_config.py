"""Environment configuration: defaults from SPEC §4 and one-line errors for bad values."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import FrozenInstanceError

import pytest

from bot.settings import PROJECT_ROOT, ConfigError, Settings


def test_defaults_follow_the_spec():
    settings = Settings.from_env({})
    assert settings.graph_api_url == "https://graph.facebook.com"
    assert settings.graph_api_version == "v25.0"
    assert settings.business_name == "Our business"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.keywords_file == PROJECT_ROOT / "keywords.yml"
    assert settings.send_rate_limit == 80
    assert settings.whatsapp_app_secret is None and settings.admin_api_token is None
    assert settings.implicit_consent_covers_utility is True


def test_settings_cannot_change_behind_a_running_process():
    settings = Settings.from_env({})
    with pytest.raises(FrozenInstanceError):
        settings.send_rate_limit = 1000  # type: ignore[misc]


def test_values_are_read_and_trimmed():
    settings = Settings.from_env({"SEND_RATE_LIMIT": " 1000 ", "GRAPH_API_URL": "http://127.0.0.1:9/", "WEBHOOK_INSECURE_DEV": "1"})
    assert settings.send_rate_limit == 1000
    assert settings.graph_api_url == "http://127.0.0.1:9"
    assert settings.webhook_insecure_dev is True


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SEND_RATE_LIMIT": "fast"}, "SEND_RATE_LIMIT must be a whole number, got 'fast'"),
        ({"SEND_RATE_LIMIT": "0"}, "SEND_RATE_LIMIT must be positive, got 0"),
        ({"WEBHOOK_INSECURE_DEV": "maybe"}, "WEBHOOK_INSECURE_DEV must be 1 or 0"),
        ({"IMPLICIT_CONSENT_COVERS_UTILITY": "2"}, "IMPLICIT_CONSENT_COVERS_UTILITY must be 1 or 0"),
        ({"DATABASE_URL": "garbage"}, "DATABASE_URL is not a database URL: 'garbage'; use sqlite:///PATH or postgresql://"),
        ({"DATABASE_URL": "mysql://app:s3cret@db/ledger"}, "DATABASE_URL uses mysql, which the bot does not support: use sqlite"),
        ({"DATABASE_URL": "postgresql+psycopg2://db/ledger"}, r"DATABASE_URL uses postgresql\+psycopg2, which the bot does not support"),
        ({"DATABASE_URL": "postgresql://app:s3cret@db:port/ledger"}, r"DATABASE_URL is not a database URL: 'postgresql://app:\*\*\*@db:port/ledger'"),
        ({"REDIS_URL": "garbage"}, "REDIS_URL is not a Redis URL .+: 'garbage'"),
        ({"REDIS_URL": "http://:s3cret@cache"}, r"REDIS_URL is not a Redis URL .+: 'http://:\*\*\*@cache'"),
        ({"REDIS_URL": "redis://cache:99999/0"}, r"REDIS_URL is not a Redis URL \(Port out of range"),
        ({"REDIS_URL": "redis://cache/0?foo=1"}, r"REDIS_URL is not a Redis URL \(.*unexpected keyword argument 'foo'"),
        ({"GRAPH_API_URL": "not a url"}, "GRAPH_API_URL must be an http:// or https:// URL with a host, .+, got 'not a url'"),
        ({"GRAPH_API_URL": "graph.facebook.com"}, "GRAPH_API_URL must be an http:// or https:// URL"),
        ({"GRAPH_API_URL": "http://graph facebook.com"}, "GRAPH_API_URL must be an http:// or https:// URL"),
        ({"GRAPH_API_URL": "ftp://me:s3cret@graph.facebook.com"}, r"GRAPH_API_URL .+, got 'ftp://me:\*\*\*@graph.facebook.com'"),
        ({"PORT": "80a"}, "PORT must be a port number, got '80a'"),
        ({"SANDBOX_PORT": "70000"}, "SANDBOX_PORT must be a port number, got '70000'"),
        ({"WEB_THREADS": "many"}, "WEB_THREADS must be a whole number, got 'many'"),
    ],
)
def test_bad_values_fail_with_one_line(env, message):
    with pytest.raises(ConfigError, match=message) as refused:
        Settings.from_env(env)
    assert "\n" not in str(refused.value) and "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    "variable,value",
    [
        ("DATABASE_URL", "garbage"), ("DATABASE_URL", "mysql://app:s3cret@db/ledger"),
        ("REDIS_URL", "garbage"), ("REDIS_URL", "http://:s3cret@cache"), ("GRAPH_API_URL", "not a url"),
    ],
)
def test_a_bad_url_stops_start_up_with_one_line(tmp_path, variable, value):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}", "PATH": "", variable: value}
    result = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {variable} ") and result.stderr.count("\n") == 1, result.stderr
    assert "s3cret" not in result.stderr
