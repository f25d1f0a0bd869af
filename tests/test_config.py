"""Environment configuration: defaults from SPEC §4 and one-line errors for bad values."""
from __future__ import annotations

import pytest

from bot.config import ConfigError, settings_from_env


def test_defaults_follow_the_spec():
    settings = settings_from_env({})
    assert settings["GRAPH_API_URL"] == "https://graph.facebook.com"
    assert settings["GRAPH_API_VERSION"] == "v25.0"
    assert settings["BUSINESS_NAME"] == "Our business"
    assert settings["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert settings["KEYWORDS_FILE"] == "keywords.yml"
    assert settings["SEND_RATE_LIMIT"] == 80
    assert settings["WHATSAPP_APP_SECRET"] is None and settings["ADMIN_API_TOKEN"] is None
    assert settings["IMPLICIT_CONSENT_COVERS_UTILITY"] is True


def test_values_are_read_and_trimmed():
    settings = settings_from_env({"SEND_RATE_LIMIT": " 1000 ", "GRAPH_API_URL": "http://127.0.0.1:9/", "WEBHOOK_INSECURE_DEV": "1"})
    assert settings["SEND_RATE_LIMIT"] == 1000
    assert settings["GRAPH_API_URL"] == "http://127.0.0.1:9"
    assert settings["WEBHOOK_INSECURE_DEV"] is True


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SEND_RATE_LIMIT": "fast"}, "SEND_RATE_LIMIT must be a whole number, got 'fast'"),
        ({"SEND_RATE_LIMIT": "0"}, "SEND_RATE_LIMIT must be positive, got 0"),
        ({"WEBHOOK_INSECURE_DEV": "maybe"}, "WEBHOOK_INSECURE_DEV must be 1 or 0"),
        ({"IMPLICIT_CONSENT_COVERS_UTILITY": "2"}, "IMPLICIT_CONSENT_COVERS_UTILITY must be 1 or 0"),
    ],
)
def test_bad_values_fail_with_one_line(env, message):
    with pytest.raises(ConfigError, match=message):
        settings_from_env(env)
