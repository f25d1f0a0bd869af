"""The one door to the WhatsApp Cloud API: heyoo, with its defects fixed at this boundary.

heyoo builds Meta's request bodies, but hard-codes Graph API v14.0, calls the module-level
`requests.post` (a new connection per call, no timeout), returns errors as dicts and logs
whole phone numbers to the root logger. Here: the URL comes from GRAPH_API_URL and
GRAPH_API_VERSION; heyoo's `requests` is replaced by a transport that posts through a pooled
keep-alive session with timeouts; answers become message ids or typed errors
(bot.graph_errors); and heyoo's log lines are masked.
"""
from __future__ import annotations

import logging
import urllib.request
from typing import Any, Callable

import heyoo
import requests
from requests.adapters import HTTPAdapter

from bot.graph_errors import CloudApiError, NotConfigured, TransientError, from_error_body
from bot.phone import mask, mask_numbers

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (3.05, 15.0)  # seconds to connect, seconds to wait for the answer


class _HeyooLogging:
    """Stands in for the `logging` module inside heyoo, which logs whole phone numbers to the
    root logger: its lines go to the "heyoo" logger with all but the last 4 digits masked, its
    two lines per message ("Sending template to …") at DEBUG, as our own lines say as much."""

    _log = logging.getLogger("heyoo")

    def info(self, message: object) -> None:
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(mask_numbers(str(message)))

    def error(self, message: object) -> None:
        self._log.error(mask_numbers(str(message)))


class _Transport:
    """Stands in for the `requests` module inside heyoo: pooled sessions and timeouts per endpoint.

    `Session.post` re-merges the session's settings and parses the URL on every call, most of
    the CPU a send costs; here each endpoint's request is prepared once and copied per call.
    """

    def __init__(self) -> None:
        self._routes: dict[str, tuple[requests.Session, requests.PreparedRequest, tuple[float, float]]] = {}

    def route(self, url: str, session: requests.Session, timeout: tuple[float, float]) -> None:
        self._routes[url] = (session, session.prepare_request(requests.Request("POST", url)), timeout)

    def post(self, url: str, headers: dict[str, str], json: Any) -> requests.Response:
        session, prepared, timeout = self._routes[url]
        request = prepared.copy()
        request.headers.update(headers)
        request.prepare_body(data=None, files=None, json=json)
        return session.send(request, timeout=timeout, allow_redirects=False)


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
            session = requests.Session()
            session.mount(base_url, HTTPAdapter(pool_connections=1, pool_maxsize=pool_size))
            # Proxy settings are read once here, not from the environment on every call (a third of its CPU).
            session.trust_env = False
            session.proxies = {key: url for key, url in urllib.request.getproxies().items() if key in ("http", "https")}
            _TRANSPORT.route(self._client.url, session, timeout)

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
        except requests.Timeout:
            raise TransientError("the Cloud API did not answer in time") from None
        except requests.ConnectionError:
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
