"""gunicorn settings for the web process, read by `gunicorn wsgi:app` from the repository root
(the Procfile, `dev.py start` and the tests that serve the bot).

Threaded workers: a thread streaming a long audit export, or waiting on the database, does not
stop the worker's heartbeat (a sync worker would be killed after `timeout` seconds mid-export)
and does not hold up webhooks. WEB_CONCURRENCY (processes) and WEB_THREADS tune it.
"""
import sys

from bot.services import STARTUP_ERRORS
from bot.settings import load_settings
from bot.storage.db import make_engine
from bot.storage.migrate import require_current

try:
    settings = load_settings()
except STARTUP_ERRORS as error:
    sys.exit(f"error: {error}")

workers = settings.web_concurrency
worker_class = "gthread"
threads = settings.web_threads
logger_class = "bot.access_log.MaskedAccessLogger"  # phone numbers in request lines are masked


def on_starting(server) -> None:
    """No web process serves a database whose schema is not this code's (`flask db upgrade` first)."""
    engine = make_engine(settings.database_url)
    try:
        require_current(engine)
    except STARTUP_ERRORS as error:
        sys.exit(f"error: {error}")
    finally:
        engine.dispose()
