"""Configuration from the environment (SPEC §4): read and checked once, into one frozen object.

Every process reads it here (the web app, the worker, gunicorn's config, the local run and the
sandbox); a value it cannot use stops start-up with a one-line reason naming the variable.
"""
from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis
import sqlalchemy as sa
from dotenv import load_dotenv

from bot.domain.identity import InvalidNumber, normalize_wa_id

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INSTANCE = PROJECT_ROOT / "instance"  # local state: the default SQLite ledger, the generated secret keys, checkpoints
DEFAULT_GRAPH_API_VERSION = "v25.0"
DEFAULT_GRAPH_API_URL = "https://graph.facebook.com"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# The ledger's dialects: the SQLite bundled with Python, PostgreSQL through psycopg 3 (bot.storage.db.engine_url).
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


def _signing_key(env: Mapping[str, str], name: str) -> str | None:
    """The key itself, or read from the file a value starting with / ./ ../ or ~ names (a mounted secret)."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if raw.startswith(("/", "./", "../", "~")):
        try:
            raw = Path(raw).expanduser().read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or type(error).__name__
            raise ConfigError(f"{name} starts like a path (/, ./, ../ or ~) but names no readable file ({reason}); a key itself may not start so") from None
    if len(raw) < 32:
        raise ConfigError(f"{name} must be at least 32 characters, such as the output of `python -c \"import secrets; print(secrets.token_hex(32))\"`")
    return raw


def _checkpoints(env: Mapping[str, str], name: str) -> str:
    """A directory (relative to the repository) or an http(s) URL to PUT checkpoints under."""
    raw = env.get(name, "").strip()
    if not raw:
        return str(INSTANCE / "checkpoints")
    if "://" in raw:
        if not _is_http_url(raw):
            raise ConfigError(f"{name} must be a directory or an http:// or https:// URL with a host, got {masked_url(raw)!r}")
        return raw
    return str(PROJECT_ROOT / Path(raw).expanduser())


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


def _business_number(env: Mapping[str, str]) -> str | None:
    """WHATSAPP_BUSINESS_NUMBER, as the digits a wa.me link takes ("+1 555 010 0000" is 15550100000)."""
    raw = env.get("WHATSAPP_BUSINESS_NUMBER", "").strip()
    if not raw:
        return None
    try:
        return normalize_wa_id(raw)
    except InvalidNumber:
        raise ConfigError(f"WHATSAPP_BUSINESS_NUMBER must be a phone number with its country code, got {raw[:32]!r}") from None


def _forward_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("FORWARD_URL", "").strip()
    if not raw:
        return None
    if not _is_http_url(raw):
        raise ConfigError(f"FORWARD_URL must be an http:// or https:// URL with a host, got {masked_url(raw)!r}")
    return raw


def _forward_secret(env: Mapping[str, str]) -> str | None:
    """Required with FORWARD_URL: the receiver must be able to tell our events from forgeries."""
    raw = env.get("FORWARD_SECRET", "").strip() or None
    if env.get("FORWARD_URL", "").strip() and (raw is None or len(raw) < 16):
        raise ConfigError("FORWARD_URL is set, so FORWARD_SECRET must be too (at least 16 characters): it signs every event (X-Signature-256)")
    return raw


def _module(env: Mapping[str, str], name: str) -> str | None:
    """A dotted Python module name (imported later, by whoever runs it)."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", raw):
        raise ConfigError(f"{name} must be a Python module such as mybot.handlers, got {raw[:80]!r}")
    return raw


def _is_http_url(raw: str) -> bool:
    try:
        url = urlsplit(raw)
        port_in_range = url.port is None or url.port > 0  # .port raises ValueError beyond 65535
    except ValueError:  # that, or a broken [IPv6] address
        return False
    return url.scheme in ("http", "https") and bool(url.hostname) and port_in_range and not _SPACE.search(raw)


@dataclass(frozen=True)
class Settings:
    """What the bot is configured with. Optional secrets and ids are None when unset."""

    whatsapp_token: str | None
    whatsapp_phone_number_id: str | None
    whatsapp_app_secret: str | None
    whatsapp_verify_token: str | None
    whatsapp_business_number: str | None  # as people dial it: the opt-in page's wa.me link
    whatsapp_business_account_id: str | None  # the WABA whose template catalog decides categories (SPEC §7)
    template_sync_seconds: int
    webhook_insecure_dev: bool
    graph_api_url: str
    graph_api_version: str
    business_name: str
    database_url: str
    redis_url: str
    admin_api_token: str | None
    secret_key: str | None  # None: a key generated into instance/ (create_app)
    ledger_signing_key: str | None  # None: a key generated into instance/ (build_services)
    ledger_checkpoints: str  # a directory or an http(s) URL
    ledger_checkpoint_seconds: int
    trusted_proxies: int
    keywords_file: Path
    send_rate_limit: int
    send_concurrency: int
    send_lease_seconds: int
    sweep_interval_seconds: int
    campaign_max_opt_out_rate: float
    implicit_consent_covers_utility: bool
    implicit_consent_covers_authentication: bool
    port: int
    web_concurrency: int
    web_threads: int
    sandbox_port: int
    sandbox_url: str
    forward_url: str | None  # where the business's systems receive events (SPEC §9)
    forward_secret: str | None  # signs them: X-Signature-256
    forward_retry_seconds: int  # the first wait after a failed delivery; each next one doubles
    bot_handlers: str | None  # the module of the business's Python handlers
    message_retention_days: int  # how long inbound messages are kept for the console

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read and check every variable; a bad value raises ConfigError naming it."""
        text = lambda name, default=None: env.get(name, "").strip() or default  # noqa: E731
        sandbox_port = _port(env, "SANDBOX_PORT", 8001)
        return cls(
            whatsapp_token=text("WHATSAPP_TOKEN"),
            whatsapp_phone_number_id=text("WHATSAPP_PHONE_NUMBER_ID"),
            whatsapp_app_secret=text("WHATSAPP_APP_SECRET"),
            whatsapp_verify_token=text("WHATSAPP_VERIFY_TOKEN"),
            whatsapp_business_number=_business_number(env),
            whatsapp_business_account_id=text("WHATSAPP_BUSINESS_ACCOUNT_ID"),
            template_sync_seconds=_positive_int(env, "TEMPLATE_SYNC_SECONDS", 3600),
            webhook_insecure_dev=_flag(env, "WEBHOOK_INSECURE_DEV", False),
            graph_api_url=_http_url(env, "GRAPH_API_URL", DEFAULT_GRAPH_API_URL),
            graph_api_version=text("GRAPH_API_VERSION", DEFAULT_GRAPH_API_VERSION),
            business_name=text("BUSINESS_NAME", "Our business"),
            database_url=_database_url(env, "DATABASE_URL") or default_database_url(),
            redis_url=_redis_url(env, "REDIS_URL", DEFAULT_REDIS_URL),
            admin_api_token=text("ADMIN_API_TOKEN"),
            secret_key=text("SECRET_KEY"),
            ledger_signing_key=_signing_key(env, "LEDGER_SIGNING_KEY"),
            ledger_checkpoints=_checkpoints(env, "LEDGER_CHECKPOINTS"),
            ledger_checkpoint_seconds=_positive_int(env, "LEDGER_CHECKPOINT_SECONDS", 3600),
            trusted_proxies=_count(env, "TRUSTED_PROXIES", 0),
            keywords_file=PROJECT_ROOT / text("KEYWORDS_FILE", "keywords.yml"),
            send_rate_limit=_positive_int(env, "SEND_RATE_LIMIT", 80),
            send_concurrency=_positive_int(env, "SEND_CONCURRENCY", 100),
            send_lease_seconds=_positive_int(env, "SEND_LEASE_SECONDS", 60),
            sweep_interval_seconds=_positive_int(env, "SWEEP_INTERVAL_SECONDS", 5),
            campaign_max_opt_out_rate=_rate(env, "CAMPAIGN_MAX_OPT_OUT_RATE", 0.02),
            implicit_consent_covers_utility=_flag(env, "IMPLICIT_CONSENT_COVERS_UTILITY", True),
            implicit_consent_covers_authentication=_flag(env, "IMPLICIT_CONSENT_COVERS_AUTHENTICATION", True),
            port=_port(env, "PORT", 8000),
            web_concurrency=_positive_int(env, "WEB_CONCURRENCY", 2),
            web_threads=_positive_int(env, "WEB_THREADS", 32),
            sandbox_port=sandbox_port,
            sandbox_url=_http_url(env, "SANDBOX_URL", f"http://127.0.0.1:{sandbox_port}"),
            forward_url=_forward_url(env),
            forward_secret=_forward_secret(env),
            forward_retry_seconds=_positive_int(env, "FORWARD_RETRY_SECONDS", 10),
            bot_handlers=_module(env, "BOT_HANDLERS"),
            message_retention_days=_positive_int(env, "MESSAGE_RETENTION_DAYS", 90),
        )

    @property
    def sandboxed(self) -> bool:
        """No WHATSAPP_TOKEN: the local run's WhatsApp sandbox stands in for Meta."""
        return not self.whatsapp_token


def load_settings() -> Settings:
    """The settings of this process: the environment, and `.env` at the repository root for
    what the environment does not set."""
    load_dotenv(PROJECT_ROOT / ".env")
    return Settings.from_env(os.environ)


def default_database_url() -> str:
    """The SQLite ledger under instance/ that serves when DATABASE_URL is not set."""
    return f"sqlite:///{INSTANCE / 'ledger.db'}"


def instance_secret(name: str) -> str:
    """A random secret kept in instance/NAME for when none is configured (fine on one host; set
    the variable when there are several). Made once: processes that start together share the first."""
    path = INSTANCE / name
    if not path.exists():
        INSTANCE.mkdir(exist_ok=True)
        draft = INSTANCE / f".{name}.{os.getpid()}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32))
        try:
            os.link(draft, path)  # atomic: when processes start together, the first key wins for all
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    return path.read_text().strip()


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip() or str(default)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{name} must be a port number, got {raw!r}")
    return int(raw)
