"""Entry point for gunicorn (`wsgi:app`) and the Flask CLI."""
import sys

from bot import STARTUP_ERRORS, create_app

try:
    app = create_app()
except STARTUP_ERRORS as error:
    sys.exit(f"error: {error}")
