"""The one door to the WhatsApp Cloud API: heyoo, with its defects fixed at this boundary.

heyoo builds Meta's request bodies, but hard-codes Graph API v14.0, calls the module-level
`requests.post` (a new connection per call, no timeout), returns errors as dicts and logs
whole phone numbers to the root logger. Here: the URL comes from GRAPH_API_URL and
GRAPH_API_VERSION; a private copy of the heyoo module (the process's own `heyoo` stays as it
is) posts through a keep-alive requests session with timeouts and proxies chosen as requests
chooses them (HTTPS_PROXY, NO_PROXY); answers become message ids or typed errors
(bot.outbound.graph_errors); and heyoo's log lines are masked.
"""
from __future__ import annotations

import http.client
import importlib.util
import logging
import select
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from requests.certs import where as ca_bundle  # type: ignore[attr-defined]  # certifi's, re-exported; the stubs omit it
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers, get_environ_proxies, select_proxy

from bot.domain.identity import MAX_IDENTIFIER, IdentifierKind, kind_of, mask, mask_numbers
from bot.outbound.graph_errors import CloudApiError, NotConfigured, TransientError, from_error_body

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (3.05, 15.0)  # seconds to connect, seconds to wait for the answer
TEMPLATE_FIELDS = "name,language,status,category,quality_score,components"
TEMPLATE_PAGE_SIZE = 100


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
        """heyoo puts the user in `to`, which takes a phone only: a BSUID goes in `recipient` (SPEC §6)."""
        if isinstance(json, dict) and kind_of(json.get("to", "0")) is not IdentifierKind.PHONE:
            json = {("recipient" if key == "to" else key): value for key, value in json.items()}
        session, prepared, timeout = self._routes[url]
        request = prepared.copy()
        request.headers.update(headers)
        request.prepare_body(data=None, files=None, json=json)
        return session.send(request, timeout=timeout, allow_redirects=False)


class _KeepAliveAdapter(BaseAdapter):
    """requests' way to the Graph API host without urllib3: each calling thread keeps one
    HTTP/1.1 connection of its own (http.client) for as long as the server keeps it open.

    urllib3's pool costs about 130 us of CPU per call on top of http.client, a third of a
    send's, and at 1,000 messages/second what a worker spent most on. Mounted on the session,
    it leaves Session.send the one door, so mocks of requests still intercept every call.
    Certificates are checked against requests' own bundle (certifi's).
    """

    def __init__(self, base_url: str):
        super().__init__()
        url = urlsplit(base_url)
        self._tls = ssl.create_default_context(cafile=ca_bundle()) if url.scheme == "https" else None
        self._address = (url.hostname, url.port or (443 if self._tls else 80))
        self._local = threading.local()

    def send(self, request: requests.PreparedRequest, stream=False, timeout=None, verify=True, cert=None, proxies=None) -> requests.Response:
        assert request.method is not None and request.url is not None, "_Transport sends only prepared POSTs"
        connection = self._connection(request, timeout)
        try:
            connection.request(request.method, request.path_url, body=request.body, headers=request.headers)
            answer = connection.getresponse()
            content = answer.read()
        except TimeoutError as error:
            self._drop()
            raise requests.ReadTimeout(error, request=request) from None
        except (OSError, http.client.HTTPException) as error:
            self._drop()
            raise requests.ConnectionError(error, request=request) from None
        if answer.will_close:
            self._drop()
        response = requests.Response()
        response.status_code, response.reason, response._content = answer.status, answer.reason, content
        response.headers = CaseInsensitiveDict(answer.getheaders())
        response.encoding = get_encoding_from_headers(response.headers)
        response.url, response.request = request.url, request
        response.connection = self  # type: ignore[assignment]  # the stubs take only requests' own HTTPAdapter
        return response

    def close(self) -> None:
        """Nothing to do: each connection closes with its thread."""

    def _connection(self, request: requests.PreparedRequest, timeout: tuple[float, float]) -> http.client.HTTPConnection:
        """This thread's connection; a new one if it has none or the server closed it while idle."""
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is not None and not _readable(connection.sock):  # an idle connection reads only its end
            return connection
        self._drop()
        connect_timeout, read_timeout = timeout
        host, port = self._address
        assert host is not None, "requests prepares no URL without a host"
        if self._tls:
            connection = http.client.HTTPSConnection(host, port, timeout=connect_timeout, context=self._tls)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=connect_timeout)
        try:
            connection.connect()
        except TimeoutError as error:
            raise requests.ConnectTimeout(error, request=request) from None
        except OSError as error:
            raise requests.ConnectionError(error, request=request) from None
        connection.sock.settimeout(read_timeout)
        self._local.connection = connection
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def _readable(sock: Any) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _private_heyoo(transport: _Transport) -> ModuleType:
    """A heyoo module of our own whose `requests` and `logging` are ours: heyoo calls them as
    module globals, and changing those of the shared `heyoo` would change it for every user
    of heyoo in the process."""
    spec = importlib.util.find_spec("heyoo")
    assert spec is not None and spec.loader is not None, "heyoo is not installed"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.requests = transport  # type: ignore[attr-defined]
    module.logging = _HeyooLogging()  # type: ignore[attr-defined]
    return module


_TRANSPORT = _Transport()
_HEYOO = _private_heyoo(_TRANSPORT)


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
        self.proxy: str | None = None  # the proxy its calls go through, if any
        self._token, self._graph, self._timeout = token, f"{base_url.rstrip('/')}/{version}", timeout
        self._client: Any = None  # a WhatsApp client of the private heyoo
        if token and phone_number_id:
            self._client = _HEYOO.WhatsApp(token, phone_number_id)
            self._client.url = f"{base_url.rstrip('/')}/{version}/{phone_number_id}/messages"
            session = requests.Session()
            # The proxy for this one URL, chosen once as requests would choose it on every call
            # (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY), not read from the environment per call (a third of its CPU).
            session.trust_env = False
            session.proxies = get_environ_proxies(self._client.url)
            # Through a proxy, requests' own adapter; otherwise the leaner one. Meta's answers are
            # a few hundred bytes: asked uncompressed, they need no decoding.
            self.proxy = select_proxy(self._client.url, session.proxies)
            session.mount(base_url, HTTPAdapter(pool_connections=1, pool_maxsize=pool_size) if self.proxy else _KeepAliveAdapter(base_url))
            session.headers["Accept-Encoding"] = "identity"
            _TRANSPORT.route(self._client.url, session, timeout)

    @property
    def url(self) -> str | None:
        return self._client.url if self._client else None

    def send_text(self, to: str, body: str) -> Accepted:
        """A free-form text message (only inside the 24-hour window), to a phone or a BSUID."""
        return self._send(to, lambda client: client.send_message(body, to, preview_url=False))

    def send_template(self, to: str, name: str, language: str, components: list | None = None) -> Accepted:
        """An approved template message, to a phone or a BSUID."""
        return self._send(to, lambda client: client.send_template(name, to, components or [], lang=language))

    def message_templates(self, waba_id: str) -> Iterator[list[dict]]:
        """The account's template catalog, one page of Meta's `data` at a time, to the last page
        (the one without `paging.next`). Pages after the first are asked for by their
        `cursors.after` on our own URL, so the token goes nowhere else; `next` itself only when
        it comes without a cursor. Raises a CloudApiError when a page cannot be read."""
        if not self._token:
            raise NotConfigured("cannot read the template catalog: set WHATSAPP_TOKEN")
        url = f"{self._graph}/{waba_id}/message_templates"
        params: dict[str, Any] | None = {"fields": TEMPLATE_FIELDS, "limit": TEMPLATE_PAGE_SIZE}
        seen: set[str] = set()
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {self._token}"
            while True:
                body = self._get(session, url, params)
                data = body.get("data")
                if not isinstance(data, list):
                    raise TransientError("the Cloud API answered the template catalog without a data list")
                yield [item for item in data if isinstance(item, dict)]
                paging: dict = body["paging"] if isinstance(body.get("paging"), dict) else {}
                cursors: dict = paging["cursors"] if isinstance(paging.get("cursors"), dict) else {}
                after, next_url = cursors.get("after"), paging.get("next")
                if not next_url or not data:
                    return
                if isinstance(after, str) and after:
                    if after in seen:
                        raise TransientError("the Cloud API repeated a page of the template catalog")
                    seen.add(after)
                    url, params = f"{self._graph}/{waba_id}/message_templates", {"fields": TEMPLATE_FIELDS, "limit": TEMPLATE_PAGE_SIZE, "after": after}
                elif isinstance(next_url, str) and next_url not in seen:
                    seen.add(next_url)
                    url, params = next_url, None
                else:
                    raise TransientError("the Cloud API gave no usable next page of the template catalog")

    def _get(self, session: requests.Session, url: str, params: dict[str, Any] | None) -> dict:
        try:
            answer = session.get(url, params=params, timeout=self._timeout, allow_redirects=False)
            body = answer.json()
        except requests.Timeout:
            raise TransientError("the Cloud API did not answer in time") from None
        except requests.ConnectionError:
            raise TransientError("cannot reach the Cloud API") from None
        except ValueError:
            raise TransientError("the Cloud API answered with something that is not JSON") from None
        if answer.status_code != 200 or not isinstance(body, dict):
            raise from_error_body(body)
        return body

    def _send(self, to: str, call: Callable[[Any], Any]) -> Accepted:
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
            return Accepted(message_id, _sent_to(body))
        error: CloudApiError = from_error_body(body)
        log.warning("send to %s failed: %s (code %s)", mask(to), type(error).__name__, error.code)
        raise error


@dataclass(frozen=True)
class Accepted:
    """Meta took the message: its id, and who Meta's answer says it goes to (`wa_id` when
    it went by phone, `user_id` when by BSUID; None if the answer does not say)."""

    message_id: str
    sent_to: str | None


def _sent_to(body: dict) -> str | None:
    contacts = body.get("contacts")
    contact = contacts[0] if isinstance(contacts, list) and contacts and isinstance(contacts[0], dict) else {}
    found = contact.get("wa_id") or contact.get("user_id")
    return found if isinstance(found, str) and 0 < len(found) <= MAX_IDENTIFIER else None


def _message_id(body: Any) -> str | None:
    messages = body.get("messages") if isinstance(body, dict) else None
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        message_id = messages[0].get("id")
        return message_id if isinstance(message_id, str) and message_id else None
    return None
