"""A business's own system receiving forwarded events (SPEC §9): a real local HTTP server that
keeps every POST and answers what the test says (200, or 503 while it is "down"); the `receiver`
fixture (a pytest plugin of conftest)."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SECRET = "receiver-secret-0123456789"


@dataclass(frozen=True)
class Received:
    body: dict
    raw: bytes
    signature: str | None
    answered: int

    @property
    def signed_right(self) -> bool:
        expected = "sha256=" + hmac.new(SECRET.encode(), self.raw, hashlib.sha256).hexdigest()
        return self.signature is not None and hmac.compare_digest(expected, self.signature)


class Receiver:
    def __init__(self) -> None:
        self.answer = 200
        self.posts: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                answer = receiver.answer
                with receiver._lock:
                    receiver.posts.append(Received(json.loads(raw), raw, self.headers.get("X-Signature-256"), answer))
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}/events"

    def start(self) -> Receiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def accepted(self, type: str | None = None) -> list[dict]:
        """The bodies it acknowledged (2xx), in the order they came; of one `type` when given."""
        with self._lock:
            return [p.body for p in self.posts if 200 <= p.answered < 300 and (type is None or p.body["type"] == type)]

    def wait_for(self, count: int, type: str | None = None, timeout: float = 15) -> list[dict]:
        """Wait until it acknowledged at least `count` events (of `type`); them."""
        deadline = time.monotonic() + timeout
        while len(found := self.accepted(type)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return found


@pytest.fixture
def receiver():
    """A running receiver, stopped when the test ends."""
    running = Receiver().start()
    yield running
    running.stop()
