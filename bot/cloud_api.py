"""The one door to the WhatsApp Cloud API: heyoo, with its defects fixed at this boundary.

heyoo builds Meta's request bodies, but hard-codes Graph API v14.0, calls the module-level
`requests.post` (a new connection per call, no timeout), returns errors as dicts and logs
whole phone numbers to the root logger. Here: the URL comes from GRAPH_API_URL and
GRAPH_API_VERSION; heyoo's `requests` is replaced by a transport that posts through a pooled
keep-alive urllib3 connection pool with timeouts; answers become message ids or typed errors
(bot.graph_errors); and heyoo's log lines are masked.
"""
from __future__ import annotations

import json
import logging
import re
import urllib.parse
import urllib.request
from typing import Any, Callable

import certifi
import heyoo
import urllib3

from bot.graph_errors import CloudApiError, NotConfigured, TransientError, from_error_body
from bot.phone import mask

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (3.05, 15.0)  # seconds to connect, seconds to wait for the answer
_NUMBERS = re.compile(r"\d{7,15}")


class _HeyooLogging:
    """Stands in for the `logging` module inside heyoo, which logs whole phone numbers to the
    root logger: its lines go to the "heyoo" logger with all but the last 4 digits masked, its
    two lines per message ("Sending template to …") at DEBUG, as our own lines say as much."""

    _log = logging.getLogger("heyoo")

    def info(self, message: object) -> None:
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(_masked(message))

    def error(self, message: object) -> None:
        self._log.error(_masked(message))


def _masked(message: object) -> str:
    return _NUMBERS.sub(lambda found: mask(found.group()), str(message))


class _Answer:
    """What heyoo reads of a response: the status code and the JSON body."""

    def __init__(self, status_code: int, content: bytes):
        self.status_code = status_code
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


class _Transport:
    """Stands in for the `requests` module inside heyoo: a pooled keep-alive connection pool
    and timeouts per endpoint. urllib3 directly: `requests` on top of it cost more CPU than
    the rest of a send together."""

    def __init__(self) -> None:
        self._routes: dict[str, tuple[urllib3.PoolManager, urllib3.Timeout]] = {}

    def route(self, url: str, pool_size: int, timeout: tuple[float, float]) -> None:
        # Proxy settings are read once here, not from the environment on every call.
        proxy = urllib.request.getproxies().get(urllib.parse.urlsplit(url).scheme)
        options = {"num_pools": 1, "maxsize": pool_size, "block": False, "ca_certs": certifi.where()}
        pool = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
        self._routes[url] = (pool, urllib3.Timeout(connect=timeout[0], read=timeout[1]))

    def post(self, url: str, headers: dict[str, str], **body: Any) -> _Answer:
        """heyoo's `requests.post(url, headers=..., json=...)`."""
        pool, timeout = self._routes[url]
        payload = json.dumps(body["json"]).encode()
        answer = pool.urlopen("POST", url, body=payload, headers=headers, timeout=timeout, retries=False, redirect=False)
        return _Answer(answer.status, answer.data)


_TRANSPORT = _Transport()
heyoo.requests = _TRANSPORT
heyoo.logging = _HeyooLogging()


class CloudApi:
    """Sends text and template messages; returns Meta's message id or raises a CloudApiError."""

    def __init__(
        self,
        token: str | None,
        phone_number_id: str | None,
        base_url: str = "https://graph.facebook.com",
        version: str = "v25.0",
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        pool_size: int = 64,
    ):
        self.phone_number_id = phone_number_id
        self._client: heyoo.WhatsApp | None = None
        if token and phone_number_id:
            self._client = heyoo.WhatsApp(token, phone_number_id)
            self._client.url = f"{base_url.rstrip('/')}/{version}/{phone_number_id}/messages"
            _TRANSPORT.route(self._client.url, pool_size, timeout)

    @property
    def url(self) -> str | None:
        return self._client.url if self._client else None

    def send_text(self, to: str, body: str) -> str:
        """A free-form text message (only inside the 24-hour window)."""
        return self._send(to, lambda client: client.send_message(body, to, preview_url=False))

    def send_template(self, to: str, name: str, language: str, components: list | None = None) -> str:
        """An approved template message."""
        return self._send(to, lambda client: client.send_template(name, to, components or [], lang=language))

    def _send(self, to: str, call: Callable[[heyoo.WhatsApp], Any]) -> str:
        if self._client is None:
            raise NotConfigured("cannot send: set WHATSAPP_TOKEN and WHATSAPP_PHONE_NUMBER_ID")
        try:
            body = call(self._client)
        except urllib3.exceptions.HTTPError as failure:
            # urllib3 counts a refused connection as a connect timeout too.
            refused = isinstance(failure, urllib3.exceptions.NewConnectionError)
            if isinstance(failure, urllib3.exceptions.TimeoutError) and not refused:
                raise TransientError("the Cloud API did not answer in time") from None
            raise TransientError("cannot reach the Cloud API") from None
        except ValueError:  # heyoo parses every answer as JSON; an HTML error page is not
            raise TransientError("the Cloud API answered with something that is not JSON") from None
        message_id = _message_id(body)
        if message_id:
            log.debug("sent to %s as %s", mask(to), message_id)
            return message_id
        error: CloudApiError = from_error_body(body)
        log.warning("send to %s failed: %s (code %s)", mask(to), type(error).__name__, error.code)
        raise error


def _message_id(body: Any) -> str | None:
    messages = body.get("messages") if isinstance(body, dict) else None
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        message_id = messages[0].get("id")
        return message_id if isinstance(message_id, str) and message_id else None
    return None
