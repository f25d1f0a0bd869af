"""`python -m sandbox --port 8001 --bot-url http://127.0.0.1:8000`: serve the sandbox (devstack does)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from werkzeug.serving import make_server

from sandbox import create_sandbox, settings_from_env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bot-url", required=True, help="where the bot serves /webhook")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the chat page polls: no line per request
    app = create_sandbox(settings_from_env(options.bot_url))
    server = make_server("127.0.0.1", options.port, app, threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        app.extensions["sandbox"].deliveries.stop()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
