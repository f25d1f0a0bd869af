"""gunicorn settings for the web process, read by `gunicorn wsgi:app` from the repository root
(the Procfile, `dev.py start` and the tests that serve the bot).

Threaded workers: a thread streaming a long audit export, or waiting on the database, does not
stop the worker's heartbeat (a sync worker would be killed after `timeout` seconds mid-export)
and does not hold up webhooks. WEB_CONCURRENCY (processes) and WEB_THREADS tune it.
"""
import sys

from bot import STARTUP_ERRORS
from bot.settings import Settings, load_settings
from bot.storage.db import make_engine
from bot.storage.migrate import require_current


def _settings_for_a_current_schema() -> Settings:
    """The settings, once the database's schema is this code's: no web process starts on one
    behind it (`flask db upgrade` first). A problem stops gunicorn with one line."""
    try:
        settings = load_settings()
        engine = make_engine(settings.database_url)
        try:
            require_current(engine)
        finally:
            engine.dispose()
    except STARTUP_ERRORS as error:
        sys.exit(f"error: {error}")
    return settings


settings = _settings_for_a_current_schema()
workers = settings.web_concurrency
worker_class = "gthread"
threads = settings.web_threads
logger_class = "bot.access_log.MaskedAccessLogger"  # phone numbers in request lines are masked
