"""gunicorn settings for the web process, read by `gunicorn wsgi:app` from the repository root
(the Procfile, `dev.py start` and the tests that serve the bot).

The worker is asgi.Worker: uvicorn's worker for gunicorn (the uvicorn-worker package; uvloop and
httptools) takes the connections in an event loop, and the Flask app runs in a pool of
WEB_THREADS threads per process that a request reaches only once its headers and its whole body
have arrived. gunicorn stays the process manager: WEB_CONCURRENCY processes, restarts, SIGTERM
(requests under way finish, within `graceful_timeout`), the on_starting schema check below.

Why not threads alone (gthread, until issue 17): a thread was given to each connection as soon
as it sent a byte and then read the request itself, so 64 connections dribbling their headers
(2 processes x 32 threads) held every thread, and /healthz, the webhook and /opt-out stopped
answering (bench/slow_clients.py: 0 of 3,000 answered; now 3,000 of 3,000, p99 21 ms). A slow
sender now costs a coroutine: headers get 10 s from the connection and 64 KiB, bodies 30 s and
4 MiB (bot.MAX_BODY); past that the connection is closed, or answered 408 or 413 (asgi.py).
The threads still do what they did: a long audit export streams from one of them without
stopping the worker's heartbeat, and webhook POSTs waiting at once in a process are recorded in
one transaction. Server CPU per webhook event is 5% lower than gthread's (docs/benchmarks.md).

Considered (docs/benchmarks.md has the numbers): a2wsgi's WSGIMiddleware as the bridge (27%
more CPU per event than gthread: four thread/event-loop round trips per request, where
asgi.WholeRequests makes one); asgiref's WsgiToAsgi (runs every request in one thread);
uvicorn's asyncio loop or h11 parser instead of uvloop and httptools (12% and 21% more CPU);
gunicorn's own ASGI worker (`-k asgi`), as cheap with WholeRequests, but its protocol class is
fixed (no deadline for headers without replacing its serving loop) and on SIGTERM it waits out
`graceful_timeout` for connections that never sent a request (30 s; uvicorn closes them at
once); gevent, which would have to patch psycopg's and Redis's waits; a buffering proxy in front
(nginx), which the Procfile's platforms do not install with pip.

Behind a load balancer: uvicorn reads no X-Forwarded-* headers (gunicorn's forwarded_allow_ips
and secure_scheme_headers no longer apply); the app's TRUSTED_PROXIES (werkzeug's ProxyFix)
alone decides which client address and scheme to believe, and the access log shows that address. The access log is still gunicorn's, with
bot.access_log.MaskedAccessLogger's masking (asgi.WholeRequests writes it).
"""
import sys

from bot.services import STARTUP_ERRORS, warn_without_catalog
from bot.settings import load_settings
from bot.storage.db import make_engine
from bot.storage.migrate import require_current

try:
    settings = load_settings()
except STARTUP_ERRORS as error:
    sys.exit(f"error: {error}")

workers = settings.web_concurrency
worker_class = "asgi.Worker"  # asgi.py; the WSGI app is still wsgi:app
threads = settings.web_threads  # the WSGI threads of each process
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
    warn_without_catalog(settings)
