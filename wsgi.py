"""Entry point for gunicorn (`wsgi:app`) and the Flask CLI."""
import sys

from bot import create_app
from bot.services import STARTUP_ERRORS

try:
    app = create_app()
except STARTUP_ERRORS as error:
    sys.exit(f"error: {error}")
