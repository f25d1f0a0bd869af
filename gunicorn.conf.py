"""gunicorn settings for the web process, read by `gunicorn wsgi:app` from the repository root
(the Procfile, `dev.py start` and the tests that serve the bot).

Threaded workers: a thread streaming a long audit export, or waiting on the database, does not
stop the worker's heartbeat (a sync worker would be killed after `timeout` seconds mid-export)
and does not hold up webhooks. WEB_CONCURRENCY (processes) and WEB_THREADS tune it.
"""
import os

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "32"))
logger_class = "bot.access_log.MaskedAccessLogger"  # phone numbers in request lines are masked
