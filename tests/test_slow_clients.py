"""Slow clients (issue 17, item 7): connections that dribble their requests in hold no WSGI
thread, so /healthz and the webhook keep answering; the web process started as the Procfile
starts it. Also, in-process, what asgi.WholeRequests hands the app and how it answers."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
import redis
import requests
from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

import asgi
from bot import MAX_BODY
from bot.settings import PROJECT_ROOT
from tests.conftest import ADMIN_TOKEN, APP_SECRET, TEST_REDIS_URL, fresh_postgres_url
from tests.local_services import free_port, migrated, wait_healthy
from tests.test_webhook import payload, sign

THREADS = 4  # per worker process, two processes: 8 threads for 60 slow connections


# -- the web process, as the Procfile starts it ------------------------------------------------


@contextmanager
def web_process(log: Path) -> Iterator[tuple[str, int, subprocess.Popen]]:
    database_url = migrated(fresh_postgres_url())
    connection = redis.Redis.from_url(TEST_REDIS_URL)
    connection.flushdb()
    connection.close()
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""), "DATABASE_URL": database_url, "REDIS_URL": TEST_REDIS_URL,
        "WHATSAPP_APP_SECRET": APP_SECRET, "ADMIN_API_TOKEN": ADMIN_TOKEN, "BUSINESS_NAME": "Acme Bakery",
        "WEB_CONCURRENCY": "2", "WEB_THREADS": str(THREADS), "TRUSTED_PROXIES": "1",
    }
    command = [sys.executable, "-m", "gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{port}", "--no-control-socket", "--access-logfile", "-"]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(process, port, log)
        yield f"http://127.0.0.1:{port}", port, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    log = tmp_path_factory.mktemp("web") / "web.log"
    with web_process(log) as (url, port, _):
        yield url, port, log


def dribbler(port: int, body: bool) -> socket.socket:
    """A connection that has sent part of a request: the headers, or the headers and part of a body."""
    sock = socket.create_connection(("127.0.0.1", port))
    if body:
        sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"object\":")
    else:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def signed_webhook(url: str, raw: bytes, pieces: list[bytes] | None = None) -> requests.Response:
    """POST /webhook with `raw` signed; sent in `pieces` (chunked transfer encoding) when given."""
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)}
    return requests.post(f"{url}/webhook", data=raw if pieces is None else iter(pieces), headers=headers, timeout=5)


@pytest.mark.processes
@pytest.mark.postgres
@pytest.mark.redis
def test_sixty_dribbling_clients_hold_no_thread_and_unfinished_headers_are_cut_off(web):
    url, port, _ = web
    opened = time.monotonic()
    slow = [dribbler(port, body=index % 6 == 0) for index in range(60)]  # 50 unfinished heads, 10 unfinished bodies
    try:
        for sock in slow[1::6]:  # dribbling on does not stretch the deadline
            sock.sendall(b"b")
        for _ in range(5):
            started = time.monotonic()
            assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
            answer = signed_webhook(url, json.dumps(payload("text_message.json")).encode())
            assert answer.status_code == 200, answer.text
            assert time.monotonic() - started < 3
        time.sleep(max(0.0, opened + asgi.HEADER_TIMEOUT + 2 - time.monotonic()))
        heads = [sock for index, sock in enumerate(slow) if index % 6]
        bodies = [sock for index, sock in enumerate(slow) if index % 6 == 0]
        assert all(closed_by_server(sock) for sock in heads), "headers unfinished after HEADER_TIMEOUT: the server must close"
        assert not any(closed_by_server(sock) for sock in bodies), "a body has BODY_TIMEOUT, longer than the headers' deadline"
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.processes
@pytest.mark.postgres
@pytest.mark.redis
def test_the_webhook_gets_the_exact_bytes_however_they_come(web):
    url, _, _ = web
    body = payload("text_message.json")
    body["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "Olá, entregam ao domingo? ✓"
    raw = json.dumps(body, indent=3, ensure_ascii=False).encode() + b"\n"
    cut = raw.index("✓".encode()) + 1  # a piece boundary inside a UTF-8 sequence

    assert signed_webhook(url, raw, [raw[:cut], raw[cut:]]).status_code == 200  # chunked transfer encoding
    assert signed_webhook(url, raw).status_code == 200
    wrong = requests.post(f"{url}/webhook", data=raw + b" ", headers={"X-Hub-Signature-256": sign(raw)}, timeout=5)
    assert wrong.status_code == 401


@pytest.mark.processes
@pytest.mark.postgres
@pytest.mark.redis
def test_a_body_over_the_limit_is_refused_without_waiting_for_it(web):
    _, port, _ = web
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body)["error"] == "request_entity_too_large"


@pytest.mark.processes
@pytest.mark.postgres
@pytest.mark.redis
def test_the_access_log_masks_numbers_and_shows_the_forwarded_client(web):
    url, _, log = web
    answer = requests.get(
        f"{url}/api/v1/consents/16505551234", headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Forwarded-For": "203.0.113.9"}, timeout=5
    )
    assert answer.status_code in (200, 404)
    deadline = time.monotonic() + 3
    while "/api/v1/consents/" not in (text := log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    (line,) = [line for line in text.splitlines() if "/api/v1/consents/" in line]
    assert line.startswith("203.0.113.9 - - [")  # TRUSTED_PROXIES=1: the load balancer's X-Forwarded-For
    assert "GET /api/v1/consents/*******1234 HTTP/1.1" in line
    assert "16505551234" not in text


@pytest.mark.processes
@pytest.mark.postgres
@pytest.mark.redis
def test_sigterm_finishes_the_request_under_way_and_drops_the_dribblers(tmp_path):
    with web_process(tmp_path / "web.log") as (_, port, process):
        raw = json.dumps(payload("text_message.json")).encode()
        head = f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}\r\nX-Hub-Signature-256: {sign(raw)}\r\n\r\n"
        under_way = socket.create_connection(("127.0.0.1", port), timeout=10)
        under_way.sendall(head.encode() + raw[:10])
        heads = [dribbler(port, body=False) for _ in range(20)]
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        under_way.sendall(raw[10:])
        assert under_way.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert process.wait(timeout=10) == 0
        assert all(closed_by_server(sock) for sock in heads)
        for sock in [under_way, *heads]:
            sock.close()


# -- WholeRequests, in-process ------------------------------------------------------------------


class _NoAccessLog:
    access_log_enabled = False


T = TypeVar("T")


def run_in_own_loop(coroutine: Callable[[], Awaitable[T]]) -> T:
    """asyncio.run in a thread of its own: the browser tests' Playwright keeps an event loop
    running in the main thread for the whole session, and asyncio.run refuses to nest in it."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(coroutine())  # type: ignore[arg-type]
        except BaseException as failure:
            outcome["failure"] = failure

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "failure" in outcome:
        raise outcome["failure"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def call(app, pieces: list[bytes], headers=(), method: str = "POST", complete: bool = True, leave: asyncio.Event | None = None) -> list[dict]:
    """One request through WholeRequests(app), its body arriving in `pieces` (all of it, unless not
    `complete`); the messages sent back. After the pieces, receive() waits for `leave` (the client
    going away), or forever."""

    async def run() -> list[dict]:
        sent: list[dict] = []
        queue = [{"type": "http.request", "body": piece, "more_body": not complete or index < len(pieces) - 1} for index, piece in enumerate(pieces)]

        async def receive() -> dict:
            if queue:
                return queue.pop(0)
            await (leave or asyncio.Event()).wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http", "http_version": "1.1", "method": method, "scheme": "http", "path": "/webhook", "raw_path": b"/webhook",
            "query_string": b"", "headers": list(headers), "client": ("198.51.100.4", 50000), "server": ("127.0.0.1", 8000),
        }
        whole = asgi.WholeRequests(app, threads=2, log=_NoAccessLog())
        try:
            await whole(scope, receive, send)
        finally:
            whole.threads.shutdown(wait=True)
        return sent

    return run_in_own_loop(lambda: asyncio.wait_for(run(), 10))


def echo_app(environ, start_response):
    body = environ["wsgi.input"].read()
    seen = {"body": body.decode("latin-1"), "length": environ["CONTENT_LENGTH"], "remote": environ["REMOTE_ADDR"],
            "chunked": environ.get("HTTP_TRANSFER_ENCODING"), "forwarded": environ.get("HTTP_X_FORWARDED_FOR")}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(seen).encode()]


@pytest.mark.unit
def test_the_app_gets_the_whole_body_in_one_read_and_its_exact_length():
    pieces = [b'{"a": "caf\xc3', b"\xa9", b'"}\r\n']
    sent = call(echo_app, pieces, headers=[(b"transfer-encoding", b"chunked")])
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    seen = json.loads(sent[1]["body"])
    assert seen["body"].encode("latin-1") == b"".join(pieces)
    assert (seen["length"], seen["chunked"]) == (str(len(b"".join(pieces))), None)


@pytest.mark.unit
def test_headers_with_underscores_are_dropped_so_proxyfix_reads_only_the_real_forwarded_for():
    headers = [(b"x-forwarded-for", b"203.0.113.9"), (b"x_forwarded_for", b"6.6.6.6")]
    sent = call(ProxyFix(echo_app, x_for=1), [b""], headers=headers, method="GET")
    seen = json.loads(sent[1]["body"])
    assert (seen["remote"], seen["forwarded"]) == ("203.0.113.9", "203.0.113.9")


@pytest.mark.unit
def test_a_body_that_does_not_arrive_in_time_gets_408_and_never_reaches_the_app(monkeypatch):
    monkeypatch.setattr(asgi, "BODY_TIMEOUT", 0.2)
    called: list[dict] = []
    never = lambda environ, start_response: called.append(environ)
    sent = call(never, [b"{"], headers=[(b"content-length", b"100")], complete=False)
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"] == "request_timeout"
    leave = asyncio.Event()
    leave.set()
    assert call(never, [b"{"], headers=[(b"content-length", b"100")], complete=False, leave=leave) == []  # it left: nobody to answer
    assert called == []


@pytest.mark.unit
def test_a_body_over_the_limit_gets_the_apps_413_and_the_connection_closes():
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    @app.post("/webhook")
    def webhook():
        return {"read": len(request.get_data())}

    sent = call(app, [b""], headers=[(b"content-length", str(MAX_BODY + 1).encode())])
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    sent = call(app, [b"x" * (MAX_BODY // 2), b"x" * (MAX_BODY // 2 + 1)])  # chunked: over the limit as it arrives
    assert sent[0]["status"] == 413


@pytest.mark.unit
def test_a_long_response_streams_bounded_and_stops_when_the_client_leaves():
    produced, finished = [], threading.Event()
    piece = b"x" * asgi.STREAM_AFTER

    def export(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/csv")])

        def pieces():
            try:
                while True:
                    produced.append(1)
                    yield piece
            finally:
                finished.set()

        return pieces()

    async def run() -> list[dict]:
        leave, sent = asyncio.Event(), []
        first_body = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict:
            if first_body:
                return first_body.pop()
            await leave.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
            if len(sent) == 4:  # the head and three pieces: the client goes away
                leave.set()
            await asyncio.sleep(0.01)

        scope = {"type": "http", "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/api/v1/audit", "raw_path": b"/api/v1/audit",
                 "query_string": b"", "headers": [], "client": ("198.51.100.4", 1), "server": ("127.0.0.1", 80)}
        whole = asgi.WholeRequests(export, threads=1, log=_NoAccessLog())
        await asyncio.wait_for(whole(scope, receive, send), 10)
        whole.threads.shutdown(wait=True)
        return sent

    sent = run_in_own_loop(run)
    assert finished.is_set()  # the generator was closed (its database cursor with it)
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert all(m["more_body"] for m in bodies) and len(bodies) >= 3
    assert len(produced) <= len(bodies) + asgi.STREAM_AHEAD + 3  # never far ahead of the client
