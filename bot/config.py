"""Configuration from the environment (SPEC §4), validated once at start-up."""
from __future__ import annotations

import os
import re
from typing import Mapping
from urllib.parse import urlsplit

import redis
import sqlalchemy as sa

DEFAULT_GRAPH_API_VERSION = "v25.0"
DEFAULT_GRAPH_API_URL = "https://graph.facebook.com"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# The ledger's dialects: the SQLite bundled with Python, PostgreSQL through psycopg 3 (bot.db.engine_url).
DATABASE_DRIVERS = {"sqlite", "sqlite+pysqlite", "postgres", "postgresql", "postgresql+psycopg"}
DATABASE_EXAMPLES = "sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DATABASE (psycopg 3)"
_PASSWORD = re.compile(r"^([^:/@]*://)?([^:/@]*):.*@")  # user:password@ at the start of a URL
_SPACE = re.compile(r"\s")


class ConfigError(ValueError):
    """An environment variable has a value the bot cannot use."""


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ConfigError(f"{name} must be a whole number of 0 or more, got {raw!r}")
    return int(raw)


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true/false), got {raw!r}")


def _rate(env: Mapping[str, str], name: str, default: float) -> float:
    """A fraction written as 0.02 or 2%."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a fraction such as 0.02 or 2%, got {raw!r}") from None
    if not 0 < value <= 1:
        raise ConfigError(f"{name} must be between 0 and 1 (or 0% and 100%), got {raw!r}")
    return value


def masked_url(url: str) -> str:
    """The URL with any password in it as ***, so that an error message can show it."""
    return _PASSWORD.sub(r"\1\2:***@", url, count=1)


def _database_url(env: Mapping[str, str], name: str) -> str | None:
    """A SQLAlchemy URL for one of DATABASE_DRIVERS (others fail later, deep in SQLAlchemy)."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        driver = sa.engine.make_url(raw).drivername
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigError(f"{name} is not a database URL: {masked_url(raw)!r}; use {DATABASE_EXAMPLES}") from None
    if driver not in DATABASE_DRIVERS:
        raise ConfigError(f"{name} uses {driver}, which the bot does not support: use {DATABASE_EXAMPLES}")
    return raw


def _redis_url(env: Mapping[str, str], name: str, default: str) -> str:
    """A URL redis-py can connect to, checked as it will read it."""
    raw = env.get(name, "").strip() or default
    try:
        redis.Redis.from_url(raw).connection_pool.make_connection()  # builds a connection; does not connect
    except (ValueError, TypeError) as error:  # TypeError: an option redis-py does not know (?foo=1)
        raise ConfigError(f"{name} is not a Redis URL ({error}): {masked_url(raw)!r}, for example {default}") from None
    return raw


def _http_url(env: Mapping[str, str], name: str, default: str) -> str:
    """An http(s) base URL with a host, so that the first send does not fail on the URL itself."""
    raw = env.get(name, "").strip() or default
    if not _is_http_url(raw):
        raise ConfigError(f"{name} must be an http:// or https:// URL with a host, such as {default}, got {masked_url(raw)!r}")
    return raw.rstrip("/")


def _is_http_url(raw: str) -> bool:
    try:
        url = urlsplit(raw)
        port_in_range = url.port is None or url.port > 0  # .port raises ValueError beyond 65535
    except ValueError:  # that, or a broken [IPv6] address
        return False
    return url.scheme in ("http", "https") and bool(url.hostname) and port_in_range and not _SPACE.search(raw)


def settings_from_env(env: Mapping[str, str] = os.environ) -> dict:
    """Flask config keys read from environment variables; unset optional ones stay None."""
    text = lambda name, default=None: env.get(name, "").strip() or default  # noqa: E731
    return {
        "WHATSAPP_TOKEN": text("WHATSAPP_TOKEN"),
        "WHATSAPP_PHONE_NUMBER_ID": text("WHATSAPP_PHONE_NUMBER_ID"),
        "WHATSAPP_APP_SECRET": text("WHATSAPP_APP_SECRET"),
        "WHATSAPP_VERIFY_TOKEN": text("WHATSAPP_VERIFY_TOKEN"),
        "WEBHOOK_INSECURE_DEV": _flag(env, "WEBHOOK_INSECURE_DEV", False),
        "GRAPH_API_URL": _http_url(env, "GRAPH_API_URL", DEFAULT_GRAPH_API_URL),
        "GRAPH_API_VERSION": text("GRAPH_API_VERSION", DEFAULT_GRAPH_API_VERSION),
        "BUSINESS_NAME": text("BUSINESS_NAME", "Our business"),
        "DATABASE_URL": _database_url(env, "DATABASE_URL"),
        "REDIS_URL": _redis_url(env, "REDIS_URL", DEFAULT_REDIS_URL),
        "ADMIN_API_TOKEN": text("ADMIN_API_TOKEN"),
        "SECRET_KEY": text("SECRET_KEY"),
        "TRUSTED_PROXIES": _count(env, "TRUSTED_PROXIES", 0),
        "KEYWORDS_FILE": text("KEYWORDS_FILE", "keywords.yml"),
        "SEND_RATE_LIMIT": _positive_int(env, "SEND_RATE_LIMIT", 80),
        "SEND_CONCURRENCY": _positive_int(env, "SEND_CONCURRENCY", 100),
        "SEND_LEASE_SECONDS": _positive_int(env, "SEND_LEASE_SECONDS", 60),
        "SWEEP_INTERVAL_SECONDS": _positive_int(env, "SWEEP_INTERVAL_SECONDS", 5),
        "CAMPAIGN_MAX_OPT_OUT_RATE": _rate(env, "CAMPAIGN_MAX_OPT_OUT_RATE", 0.02),
        "IMPLICIT_CONSENT_COVERS_UTILITY": _flag(env, "IMPLICIT_CONSENT_COVERS_UTILITY", True),
        "IMPLICIT_CONSENT_COVERS_AUTHENTICATION": _flag(env, "IMPLICIT_CONSENT_COVERS_AUTHENTICATION", True),
    }
