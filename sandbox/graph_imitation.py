"""The one imitation of the Graph API's send endpoint: the tests and benchmarks run it as a local
HTTP server; the sandbox answers the bot's calls with it (`answer`) and shows what it accepts.

It answers POST /{version}/{phone-number-id}/messages like Meta: a message id after `latency`
seconds, or an error body. It refuses a wrong token (190) or phone number id (100) when given
ones, records every request, answers 130429 once more than `cap` requests arrived within one
second, can fail chosen recipients with a Meta error code, can answer 5xx for a while, and can
hang for a while (a call held past a client's timeout, then answered 504: nothing was sent).
It also answers GET /{version}/{waba-id}/message_templates with `templates`, `templates_page`
at a time, paged with cursors like Meta (or a Meta error while `templates_error` is set).
Run it alone with `python -m sandbox.graph_imitation --port 8990`.

It serves HTTP/1.1 keep-alive from one asyncio loop on a thread of its own: a thousand calls a
second cost it little CPU, and it notes each request when it arrives, not when one of hundreds
of threads gets its turn, so its count against the cap is the count of arrivals.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import itertools
import json
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit


def _template(name: str, category: str, status: str = "APPROVED", body: str = "") -> dict:
    return {
        "name": name, "language": "en_US", "status": status, "category": category, "id": str(594425479000000 + zlib.crc32(name.encode()) % 10**6),
        "quality_score": {"score": "GREEN"}, "components": [{"type": "BODY", "text": body}],
    }


# The templates a local run can send, as Meta lists them: one of each category, and one Meta paused.
SAMPLE_TEMPLATES = [
    _template("order_update", "UTILITY", body="Your order {{1}} is {{2}}."),
    _template("spring_sale", "MARKETING", body="Spring sale: 20% off everything this week."),
    _template("login_code", "AUTHENTICATION", body="{{1}} is your verification code."),
    _template("winter_sale", "MARKETING", status="PAUSED", body="Winter sale: 30% off coats."),
]


@dataclass
class Received:
    at: float
    to: str
    body: dict
    status: int
    code: int | None = None  # the Meta error code answered, if any
    meta_id: str | None = None  # the message id answered to an accepted send


@dataclass
class GraphImitation:
    latency: float = 0.0
    cap: int | None = None  # requests per second before 130429
    fail: dict[str, int] = field(default_factory=dict)  # recipient -> Meta error code
    requests: list[Received] = field(default_factory=list)
    server_errors_until: float = 0.0  # answer 503 until this time.monotonic()
    hang_until: float = 0.0  # until this time.monotonic(), hold each call `hang_seconds`, then answer 504
    hang_seconds: float = 20.0
    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None  # when set, a call without it is refused like Meta (401, code 190)
    phone_number_id: str | None = None  # when set, a call to another is refused like Meta (400, code 100)
    # Called with each send about to be accepted; a ValueError refuses it like Meta (400, code 100).
    on_accept: Callable[[Received], None] | None = None
    repeated_id: str | None = None  # when set, every accepted send gets this message id (an answer the bot cannot store twice)
    templates: list[dict] = field(default_factory=lambda: [dict(t) for t in SAMPLE_TEMPLATES])  # the account's catalog
    templates_page: int = 2  # templates per page of the catalog: small, so that paging is exercised
    templates_error: int | None = None  # when set, catalog requests are answered with this Meta error code
    catalog_calls: int = 0  # catalog pages asked for

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._window: collections.deque[float] = collections.deque()
        self._ids = itertools.count(1)
        self._id_prefix = f"wamid.IMITATION{uuid.uuid4().hex[:8].upper()}"  # unique across restarts, as Meta's ids are
        self._in_flight = 0
        self.connections = 0  # TCP connections accepted: keep-alive clients open few
        self._answered: collections.deque[float] = collections.deque(maxlen=10_000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> GraphImitation:
        listening = threading.Event()
        threading.Thread(target=self._run, args=(listening,), name="graph-imitation", daemon=True).start()
        listening.wait(timeout=10)
        return self

    def stop(self) -> None:
        if self._loop:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _run(self, listening: threading.Event) -> None:
        """The imitation's thread: its own event loop (the caller's thread may run one already)."""
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, self.host, self.port, backlog=1024))
        self.port = self._server.sockets[0].getsockname()[1]
        listening.set()
        self._loop.run_forever()
        self._loop.close()

    async def _close(self) -> None:
        self._server.close()
        await self._drop_clients()
        serving = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)

    def drop_connections(self) -> None:
        """Close every client connection, as a server does with idle keep-alive connections."""
        asyncio.run_coroutine_threadsafe(self._drop_clients(), self._loop).result(timeout=10)

    async def _drop_clients(self) -> None:
        for writer in self._clients:
            writer.transport.abort()

    def in_flight(self, grace: float = 0.05) -> int:
        """Requests a client killed now may not have recorded: unanswered, or answered within `grace` s."""
        with self._lock:
            recent = sum(1 for at in self._answered if at > time.monotonic() - grace)
            return self._in_flight + recent

    def sent_to(self) -> collections.Counter:
        """How many accepted sends each recipient got."""
        with self._lock:
            return collections.Counter(r.to for r in self.requests if r.status == 200)

    def stats(self) -> dict:
        """Accepted sends per recipient, error counts, the first and last accepted times, and the
        most requests that arrived within one second (what the cap is counted on)."""
        with self._lock:
            accepted = [r for r in self.requests if r.status == 200]
            errors = collections.Counter(str(r.code) for r in self.requests if r.code is not None)
            arrivals = [r.at for r in self.requests]
        peak = start = 0
        for end, at in enumerate(arrivals):
            while arrivals[start] <= at - 1.0:
                start += 1
            peak = max(peak, end - start + 1)
        return {
            "accepted": len(accepted),
            "sent_to": dict(collections.Counter(r.to for r in accepted)),
            "errors": dict(errors),
            "first": accepted[0].at if accepted else None,
            "last": accepted[-1].at if accepted else None,
            "busiest_second": peak,
            "catalog_calls": self.catalog_calls,
        }

    def count(self, code: int) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.code == code)

    def _admit(self, now: float) -> bool:
        if self.cap is None:
            return True
        while self._window and self._window[0] <= now - 1.0:
            self._window.popleft()
        if len(self._window) >= self.cap:
            return False
        self._window.append(now)
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: its requests one after another, kept alive until it closes."""
        self.connections += 1
        self._clients.add(writer)
        try:
            while request_line := await reader.readline():
                headers = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                try:
                    raw = await reader.readexactly(int(headers.get("content-length", 0)))
                except asyncio.IncompleteReadError as cut:  # a client killed while writing its request
                    self.receive("", "", cut.partial)
                    return
                target = request_line.split(b" ")[1].decode("latin-1") if request_line.count(b" ") >= 2 else ""
                if request_line.startswith(b"GET ") and "/message_templates" in target:
                    writer.write(_response(*self.catalog_page(target, headers.get("authorization", ""))))
                elif request_line.startswith(b"GET "):  # GET /_stats: what a benchmark in another process needs to know
                    writer.write(_response(200, self.stats()))
                else:
                    await self._answer(writer, *self.receive(target, headers.get("authorization", ""), raw))
                await writer.drain()
        except ConnectionError:  # clients killed mid-request are expected
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    def receive(self, path: str, authorization: str, raw: bytes) -> tuple[int, dict]:
        """Note a send request (its path, Authorization header and body) as it arrives and decide
        Meta's answer: the HTTP status and the body."""
        try:
            body = json.loads(raw)
            to = str(body["to"] if "to" in body else body["recipient"])  # a phone wins when both are sent
        except (ValueError, KeyError, TypeError):  # a client killed while writing its request
            body, to = {}, ""
        now = time.monotonic()
        with self._lock:
            if self.token is not None and authorization != f"Bearer {self.token}":
                status, answer, code = 401, _error(190, "Invalid OAuth access token - Cannot parse access token"), 190
            elif self.phone_number_id is not None and path.split("/")[2:3] != [self.phone_number_id]:
                status, answer, code = 400, _error(100, "Unsupported post request: no such phone number id"), 100
            elif not to:
                status, answer, code = 400, _error(100, "Invalid parameter"), 100
            elif now < self.server_errors_until:
                status, answer, code = 503, {"error": {"message": "Service temporarily unavailable", "code": 2}}, 2
            elif now < self.hang_until:
                status, answer, code = 504, {"error": {"message": "Gateway timeout", "code": 2}}, 2
            elif not self._admit(now):
                status, answer, code = 400, _error(130429, "Rate limit hit"), 130429
            elif to in self.fail:
                status, answer, code = 400, _error(self.fail[to], "Failed for this recipient"), self.fail[to]
            else:
                status, code, answer = self._accept(to, body)
            meta_id = answer["messages"][0]["id"] if status == 200 else None
            self.requests.append(Received(time.time(), to, body, status, code, meta_id))
            self._in_flight += 1
        return status, answer

    def catalog_page(self, target: str, authorization: str, base_url: str | None = None) -> tuple[int, dict]:
        """One page of the template catalog, as Meta pages it: `paging.cursors` always, `paging.next`
        (under `base_url`, this server's by default) only when more follow. The cursor is the
        offset, opaque to clients as Meta's is."""
        url = urlsplit(target)
        with self._lock:
            self.catalog_calls += 1
            if self.token is not None and authorization != f"Bearer {self.token}":
                return 401, _error(190, "Invalid OAuth access token - Cannot parse access token")
            if self.templates_error is not None:
                return 400, _error(self.templates_error, "Cannot read the message templates")
            after = parse_qs(url.query).get("after", ["0"])[0]
            start = int(after) if after.isdigit() else 0
            end = start + self.templates_page
            page = [dict(t) for t in self.templates[start:end]]
            total = len(self.templates)
        paging: dict = {"cursors": {"before": str(start), "after": str(min(end, total))}}
        if end < total:
            paging["next"] = f"{(base_url or self.url).rstrip('/')}{url.path}?limit={self.templates_page}&after={end}"
        return 200, {"data": page, "paging": paging}

    def _accept(self, to: str, body: dict) -> tuple[int, int | None, dict]:
        meta_id = self.repeated_id or f"{self._id_prefix}{next(self._ids):012d}"
        if self.on_accept is not None:
            try:
                self.on_accept(Received(time.time(), to, body, 200, None, meta_id))
            except ValueError:
                return 400, 100, _error(100, "Invalid parameter")
        contact = {"input": to, "wa_id" if "to" in body else "user_id": to}  # as Meta answers a phone, or a BSUID
        return 200, None, {"messaging_product": "whatsapp", "contacts": [contact], "messages": [{"id": meta_id}]}

    async def _answer(self, writer: asyncio.StreamWriter, status: int, answer: dict) -> None:
        try:
            if status == 200 and self.latency:
                await asyncio.sleep(self.latency)
            elif status == 504:
                await asyncio.sleep(self.hang_seconds)
            writer.write(_response(status, answer))
        finally:
            with self._lock:
                self._in_flight -= 1
                self._answered.append(time.monotonic())


def _response(status: int, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    return head.encode() + payload


def _error(code: int, message: str) -> dict:
    return {"error": {"message": f"(#{code}) {message}", "type": "OAuthException", "code": code, "fbtrace_id": "imitation"}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8990)
    parser.add_argument("--latency", type=float, default=0.15)
    parser.add_argument("--cap", type=int)
    options = parser.parse_args()
    # Alone in its process, it keeps every request: a full garbage collection over them all
    # would stall it for tens of ms and then stamp the requests that queued meanwhile as one
    # burst, answering 130429 to sends that arrived evenly. What it frees is freed by
    # reference counting.
    gc.disable()
    imitation = GraphImitation(latency=options.latency, cap=options.cap, port=options.port).start()
    print(f"Graph API imitation on {imitation.url} (latency {options.latency}s, cap {options.cap})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        imitation.stop()
