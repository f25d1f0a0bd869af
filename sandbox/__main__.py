"""The sandbox's command line.

    python -m sandbox serve --port 8001 --bot-url http://127.0.0.1:8000   serve it (devstack does)
    python -m sandbox simulate "hello" --from 15550100001                  be a WhatsApp user from a shell
"""
from __future__ import annotations

import logging
import signal
import sys

import click
from werkzeug.serving import make_server

from bot.services import STARTUP_ERRORS
from bot.settings import Settings, load_settings
from sandbox import create_sandbox, sandbox_of
from sandbox.cli import simulate


def _settings() -> Settings:
    try:
        return load_settings()
    except STARTUP_ERRORS as error:
        raise click.ClickException(str(error)) from None


@click.group()
def main() -> None:
    """The WhatsApp sandbox: stands in for Meta in a local run."""


@main.command()
@click.option("--port", type=int, required=True)
@click.option("--bot-url", required=True, help="Where the bot serves /webhook.")
def serve(port: int, bot_url: str) -> None:
    """Serve the sandbox for the bot configured in the environment."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the chat page polls: no line per request
    app = create_sandbox(_settings(), bot_url)
    server = make_server("127.0.0.1", port, app, threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox_of(app).deliveries.stop()
        server.server_close()


main.add_command(simulate)

if __name__ == "__main__":
    main(prog_name="python -m sandbox")
