"""The web process's worker (gunicorn.conf.py's `worker_class`): uvicorn's event loop takes the
connections, and the Flask app (`wsgi:app`, unchanged) runs in a pool of WEB_THREADS threads
that a request reaches only once all of it has arrived. gunicorn.conf.py says why.

- `Worker`: uvicorn's gunicorn worker (the uvicorn-worker package) on uvloop and httptools,
  serving the WSGI app that gunicorn loads through `WholeRequests`. Headers have HEADER_TIMEOUT
  seconds to arrive, counted from the connection (or, on a kept-alive one, from the request's
  first byte), and at most MAX_HEAD bytes: a connection past either is closed (431 for the
  size). Idle kept-alive connections close after gunicorn's `keepalive` (2 s), as before.
- `WholeRequests`: reads each body in the event loop, at most bot.MAX_BODY bytes within
  BODY_TIMEOUT seconds (408 after that), and only then calls the app in a thread with the exact
  bytes (wsgi.input). The response goes back to the loop in one piece, or, once STREAM_AFTER
  bytes of it are waiting (the audit export), piece by piece, the thread at most STREAM_AHEAD
  pieces ahead of the client. Each request goes to gunicorn's access log (bot.access_log's
  masking) with the environ the app saw, as gunicorn's own workers log it.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from bot import MAX_BODY

HEADER_TIMEOUT = 10.0  # s for a request's headers, from the connection or the request's first byte
MAX_HEAD = 64 * 1024  # bytes of request line and headers (nginx's default allows 32 KiB)
BODY_TIMEOUT = 30.0  # s for a request's whole body, once its headers are in
STREAM_AFTER = 64 * 1024  # response bytes a thread holds before it hands them to the client piece by piece
STREAM_AHEAD = 2  # pieces a streaming thread may be ahead of the client

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]


class TimelyHeaders(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a deadline and a size limit for each request's head."""

    _deadline: asyncio.TimerHandle | None = None
    _head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a kept-alive connection's next request: its first byte starts the clock
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._deadline is not None and self._head_bytes > MAX_HEAD and not self.transport.is_closing():
            self._disarm()
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_bytes = 0
        self._deadline = self.loop.call_later(HEADER_TIMEOUT, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


class _TooLarge(int):
    """A body over the limit: its declared length, or the bytes that came before it was cut short."""


class _Late:
    """A body that did not arrive within BODY_TIMEOUT."""


class _Gone(Exception):
    """The client went away while its response was streaming."""


class _Stream:
    """A response that a thread hands to the event loop piece by piece, at most STREAM_AHEAD
    pieces ahead of the client."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.pieces: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.room = threading.Semaphore(STREAM_AHEAD)  # released as the client takes each piece
        self.gone = False  # the client left: the thread stops at its next piece

    def put(self, piece: bytes) -> None:
        """From the thread: wait for room, then queue a piece; _Gone once the client left."""
        if not self.gone:
            self.room.acquire()
        if self.gone:
            raise _Gone
        self.loop.call_soon_threadsafe(self.pieces.put_nowait, piece)

    def end(self, failure: BaseException | None = None) -> None:
        """From the thread: no more pieces (or the app failed)."""
        self.loop.call_soon_threadsafe(self.pieces.put_nowait, failure)

    def leave(self) -> None:
        """From the event loop: the client is gone; a thread waiting for room goes on, and stops."""
        self.gone = True
        self.room.release(STREAM_AHEAD + 1)


class WholeRequests:
    """A WSGI app as an ASGI app whose threads see only whole requests (see the module's docstring)."""

    def __init__(self, app: Callable, threads: int, log: Any):
        self.app = app
        self.threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsgi")
        self.log = log  # gunicorn's logger: its access() masks what bot.access_log masks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One HTTP request (the worker runs no lifespan and refuses WebSockets)."""
        started = time.monotonic()
        body = await self._body(scope, receive)
        if body is None:
            return  # the client left before its body was in: nobody to answer
        environ = _environ(scope, body)
        if isinstance(body, _Late):
            late = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_LATE_BODY)), (b"connection", b"close")]
            await send({"type": "http.response.start", "status": 408, "headers": late})
            await send({"type": "http.response.body", "body": _LATE_BODY})
            self._log(scope, environ, 408, late, len(_LATE_BODY), started)
            return
        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()
        self.threads.submit(self._call, environ, loop, answer)
        status, headers, first, stream = await answer
        if isinstance(body, _TooLarge):
            headers = [*headers, (b"connection", b"close")]  # the rest of the body is not read
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if stream is None:
            await send({"type": "http.response.body", "body": first})
            sent = len(first)
        else:
            sent = await self._stream(first, stream, receive, send)
        self._log(scope, environ, status, headers, sent, started)

    async def _body(self, scope: Scope, receive: Receive) -> bytes | _TooLarge | _Late | None:
        """The whole body; _TooLarge over MAX_BODY, _Late after BODY_TIMEOUT, None when the client left."""
        declared = _content_length(scope)
        if declared is not None and declared > MAX_BODY:
            return _TooLarge(declared)
        pieces: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    piece = message.get("body", b"")
                    size += len(piece)
                    if size > MAX_BODY:
                        return _TooLarge(size)
                    pieces.append(piece)
                    if not message.get("more_body", False):
                        return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        except TimeoutError:
            return _Late()

    def _call(self, environ: dict, loop: asyncio.AbstractEventLoop, answer: asyncio.Future) -> None:
        """In a thread: run the app and resolve `answer` with (status, headers, the body or its
        first bytes, None or the _Stream that the rest comes through)."""
        head: list = []
        pieces: list[bytes] = []
        stream: _Stream | None = None

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None) -> Callable[[bytes], None]:
            if exc_info is not None and stream is not None:
                raise exc_info[1].with_traceback(exc_info[2])
            head[:] = [int(status[:3]), [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]]
            return pieces.append  # WSGI's write(): its bytes go before the iterable's

        try:
            iterable: Iterable[bytes] = self.app(environ, start_response)
            try:
                size = sum(map(len, pieces))
                for piece in iterable:
                    if piece:
                        pieces.append(piece)
                        size += len(piece)
                    if size >= STREAM_AFTER:
                        joined = b"".join(pieces)
                        pieces.clear()
                        size = 0
                        if stream is None:
                            stream = _Stream(loop)
                            loop.call_soon_threadsafe(_resolve, answer, (*head, joined, stream))
                        else:
                            stream.put(joined)
                if stream is None:
                    if not head:
                        raise RuntimeError("the WSGI app returned without calling start_response")
                    loop.call_soon_threadsafe(_resolve, answer, (*head, b"".join(pieces), None))
                    return
                if pieces:
                    stream.put(b"".join(pieces))
                stream.end()
            finally:
                close = getattr(iterable, "close", None)
                if close is not None:
                    close()
        except _Gone:
            if stream is not None:  # always: only a stream raises it
                stream.end()
        except BaseException as failure:  # the event loop raises it: uvicorn answers 500, or cuts a response it had started
            if stream is None:
                loop.call_soon_threadsafe(_fail, answer, failure)
            else:
                stream.end(failure)

    async def _stream(self, first: bytes, stream: _Stream, receive: Receive, send: Send) -> int:
        """Send a streaming response as the thread hands it over; return the bytes sent."""

        async def watch() -> None:  # the client leaving stops the thread at its next piece
            while (await receive())["type"] != "http.disconnect":
                pass
            stream.leave()

        watcher = asyncio.create_task(watch())
        sent = len(first)
        try:
            await send({"type": "http.response.body", "body": first, "more_body": True})
            while (piece := await stream.pieces.get()) is not None:
                if isinstance(piece, BaseException):
                    raise piece
                if not stream.gone:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                    sent += len(piece)
                stream.room.release()
            if not stream.gone:
                await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()
            if not stream.gone:  # ended, failed or cancelled (shutdown): the thread must never wait for room again
                stream.leave()
        return sent

    def _log(self, scope: Scope, environ: dict, status: int, headers: list, sent: int, started: float) -> None:
        if not self.log.access_log_enabled:
            return
        response = SimpleNamespace(status=str(status), headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers], sent=sent)
        request = SimpleNamespace(headers=[(k.decode("latin-1").upper(), v.decode("latin-1")) for k, v in scope["headers"]])
        self.log.access(response, request, environ, timedelta(seconds=time.monotonic() - started))


_LATE_BODY = b'{"error": "request_timeout", "detail": "the request body did not arrive in time"}'


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future, failure: BaseException) -> None:
    if not future.done():
        future.set_exception(failure)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def _environ(scope: Scope, body: bytes | _TooLarge | _Late) -> dict:
    """The WSGI environ gunicorn would build for this request, with the body read (exact bytes,
    CONTENT_LENGTH their count; over the limit, the length that was announced or reached and no
    bytes, so that the app answers 413 as it does when it reads too much)."""
    raw_path, query = scope.get("raw_path") or scope["path"].encode(), scope["query_string"]
    client, server = scope.get("client"), scope.get("server")
    data = body if isinstance(body, bytes) else b""
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": urllib.parse.unquote_to_bytes(raw_path).decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "RAW_URI": (raw_path + b"?" + query if query else raw_path).decode("latin-1"),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "SERVER_NAME": server[0] if server else "localhost",
        "SERVER_PORT": str(server[1]) if server and server[1] else "80",
        "REMOTE_ADDR": client[0] if client else "-",
        "REMOTE_PORT": str(client[1]) if client else "0",
        "CONTENT_LENGTH": str(body if isinstance(body, _TooLarge) else len(data)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(data),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    repeated: dict[str, list[str]] = {}
    for name, value in scope["headers"]:
        if b"_" in name or name in (b"content-length", b"transfer-encoding"):
            continue  # as gunicorn does (header_map "drop"): X_Forwarded_For must not pass for X-Forwarded-For
        text = value.decode("latin-1")
        key = "CONTENT_TYPE" if name == b"content-type" else "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if key in environ:
            repeated.setdefault(key, [environ[key]]).append(text)
        else:
            environ[key] = text
    for key, values in repeated.items():
        environ[key] = ",".join(values)
    return environ


class Worker(UvicornWorker):
    """gunicorn's worker: uvicorn on uvloop and httptools (with TimelyHeaders), the app that gunicorn
    loads served through WholeRequests with WEB_THREADS threads. Forwarded addresses are the
    app's business (TRUSTED_PROXIES, ProxyFix), so uvicorn reads no proxy headers; the access log
    is gunicorn's (WholeRequests writes it), so uvicorn writes none."""

    CONFIG_KWARGS = {"loop": "uvloop", "http": TimelyHeaders, "ws": "none", "lifespan": "off", "proxy_headers": False, "access_log": False}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.timeout_graceful_shutdown = self.cfg.graceful_timeout

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi: Any = WholeRequests(self.wsgi, self.cfg.threads, self.log)  # gunicorn's `threads`: the WSGI threads
