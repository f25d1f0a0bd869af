"""The Cloud API adapter, against requests-mock: URLs, bodies, typed errors, timeouts, masked logs."""
from __future__ import annotations

import json
import logging
import socket
import ssl
import subprocess
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from bot.outbound import graph_errors as errors
from bot.outbound.cloud_api import Accepted, CloudApi
from tests.local_services import free_port

PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"
URL = "http://graph.test/v99.0/106540352242922/messages"
TO = "16505551234"


def payload(name: str) -> dict:
    return json.loads((PAYLOADS / name).read_text())


@pytest.fixture
def api() -> CloudApi:
    return CloudApi("secret-token", "106540352242922", base_url="http://graph.test/", version="v99.0")


def test_sends_text_to_the_configured_version_with_the_token(api, requests_mock):
    requests_mock.post(URL, json=payload("graph_send_ok.json"))
    assert api.send_text(TO, "Hello") == Accepted("wamid.HBgLMTY1MDU1NTEyMzQVAgARGBJBQkNERUYwMTIzNDU2Nzg5AA==", TO)
    request = requests_mock.last_request
    assert request.headers["Authorization"] == "Bearer secret-token"
    assert request.json() == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": TO,
        "type": "text", "text": {"preview_url": False, "body": "Hello"},
    }
    assert request.timeout == (3.05, 15.0)


def test_sends_a_template_with_language_and_components(api, requests_mock):
    requests_mock.post(URL, json=payload("graph_send_ok.json"))
    components = [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}]
    api.send_template(TO, "order_update", "en_US", components)
    assert requests_mock.last_request.json()["template"] == {
        "name": "order_update", "language": {"code": "en_US"}, "components": components,
    }


@pytest.mark.parametrize(
    "name, error_class, retry_after",
    [
        ("graph_error_130429.json", errors.ThroughputLimited, timedelta(seconds=2)),
        ("graph_error_131056.json", errors.PairRateLimited, timedelta(seconds=6)),
        ("graph_error_131047.json", errors.WindowClosed, None),
        ("graph_error_132001.json", errors.TemplateError, None),
        ("graph_error_190.json", errors.AccessTokenInvalid, None),
    ],
)
def test_meta_errors_become_typed_errors_by_code(api, requests_mock, name, error_class, retry_after):
    body = payload(name)
    requests_mock.post(URL, status_code=400, json=body)
    with pytest.raises(error_class) as raised:
        api.send_template(TO, "spring_sale", "en_GB")
    assert raised.value.code == body["error"]["code"]
    assert raised.value.retry_after == retry_after
    assert raised.value.details == body["error"]["error_data"]["details"]


@pytest.mark.parametrize(
    "code, error_class, retryable",
    [
        (131049, errors.EcosystemLimited, True), (131050, errors.MarketingOptedOut, False),
        (131026, errors.Undeliverable, False), (131048, errors.SpamRateLimited, True),
        (132015, errors.TemplateError, False), (131000, errors.TransientError, True),
        (133004, errors.TransientError, True), (80007, errors.AppRateLimited, True),
        (100, errors.RequestRejected, False),
    ],
)
def test_every_meaningful_code_has_its_class(api, requests_mock, code, error_class, retryable):
    requests_mock.post(URL, status_code=400, json={"error": {"code": code, "message": f"(#{code})"}})
    with pytest.raises(errors.CloudApiError) as raised:
        api.send_text(TO, "hi")
    assert type(raised.value) is error_class and raised.value.retryable is retryable


def test_131049_waits_a_day():
    assert errors.EcosystemLimited.retry_after == timedelta(hours=24)


def test_code_is_matched_not_http_status(api, requests_mock):
    requests_mock.post(URL, status_code=200, json={"error": {"code": 130429, "message": "rate"}})
    with pytest.raises(errors.ThroughputLimited):
        api.send_text(TO, "hi")


@pytest.mark.parametrize(
    "mock",
    [
        {"exc": requests.ReadTimeout},
        {"exc": requests.ConnectionError},
        {"status_code": 502, "text": "<html>Bad gateway</html>"},
        {"status_code": 500, "json": {"error": {"code": 2, "message": "Service temporarily unavailable"}}},
        {"status_code": 200, "json": {"messaging_product": "whatsapp"}},
    ],
    ids=["timeout", "connection", "html-502", "code-2", "no-id"],
)
def test_transport_failures_are_transient(api, requests_mock, mock):
    requests_mock.post(URL, **mock)
    with pytest.raises(errors.TransientError) as raised:
        api.send_text(TO, "hi")
    assert raised.value.retryable


def test_without_credentials_sending_fails_clearly():
    with pytest.raises(errors.NotConfigured, match="set WHATSAPP_TOKEN and WHATSAPP_PHONE_NUMBER_ID"):
        CloudApi(None, None).send_text(TO, "hi")


def test_connections_are_pooled_and_kept_alive(graph):
    """Against a real local HTTP/1.1 server: three sends, one TCP connection."""
    api = CloudApi("token", "106540352242922", base_url=graph.url)
    for text in ("one", "two", "three"):
        assert api.send_text(TO, text).message_id.startswith("wamid.")
    assert graph.connections == 1


def test_a_connection_the_server_closed_is_replaced_before_the_next_send(graph):
    api = CloudApi("token", "106540352242922", base_url=graph.url)
    assert api.send_text(TO, "one").message_id.startswith("wamid.")
    graph.drop_connections()
    assert api.send_text(TO, "two").message_id.startswith("wamid.")
    assert (graph.connections, len(graph.requests)) == (2, 2)


def test_an_answer_later_than_the_read_timeout_is_transient(graph):
    api = CloudApi("token", "106540352242922", base_url=graph.url, timeout=(3.05, 0.2))
    graph.hang_until, graph.hang_seconds = float("inf"), 1.0
    with pytest.raises(errors.TransientError, match="did not answer in time"):
        api.send_text(TO, "hi")


def test_a_host_that_refuses_connections_is_transient():
    api = CloudApi("token", "106540352242922", base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(errors.TransientError, match="cannot reach"):
        api.send_text(TO, "hi")


def test_an_https_host_whose_certificate_is_not_trusted_is_not_sent_to(tmp_path):
    """TLS as requests does it: a self-signed certificate is refused before anything is sent."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    received = []

    def serve_one() -> None:
        connection, _ = listener.accept()
        try:
            with context.wrap_socket(connection, server_side=True) as tls:
                received.append(tls.recv(1024))
        except (ssl.SSLError, OSError):  # the client gave up on the handshake
            pass

    server = threading.Thread(target=serve_one, daemon=True)
    server.start()
    api = CloudApi("token", "106540352242922", base_url=f"https://127.0.0.1:{listener.getsockname()[1]}")
    with pytest.raises(errors.TransientError, match="cannot reach"):
        api.send_text(TO, "hi")
    server.join(timeout=5)
    listener.close()
    assert received == []


def test_logs_never_hold_a_whole_number(api, requests_mock, caplog):
    caplog.set_level(logging.DEBUG)
    requests_mock.post(URL, json=payload("graph_send_ok.json"))
    api.send_text(TO, "hi")
    requests_mock.post(URL, status_code=400, json=payload("graph_error_131047.json"))
    with pytest.raises(errors.WindowClosed):
        api.send_text(TO, "hi")
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "1234" in text and TO not in text


class RecordingProxy:
    """A forward proxy that answers every request itself, like Meta, and notes its target."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.targets.append(self.path)  # a proxied request names the whole URL
                body = json.dumps(payload("graph_send_ok.json")).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def proxy():
    recording = RecordingProxy()
    yield recording
    recording.server.shutdown()


@pytest.mark.parametrize(
    "no_proxy, through_proxy",
    [("127.0.0.1", False), ("localhost,127.0.0.1", False), ("", True), ("graph.facebook.com", True)],
)
def test_proxies_are_chosen_as_requests_chooses_them(monkeypatch, graph, proxy, no_proxy, through_proxy):
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    api = CloudApi("secret-token", "106540352242922", base_url=graph.url, version="v25.0")
    assert requests.utils.should_bypass_proxies(api.url, no_proxy=None) is not through_proxy  # what requests itself does
    api.send_text(TO, "Hello")
    if through_proxy:
        assert proxy.targets == [api.url] and graph.requests == [] and api.proxy == proxy.url
    else:
        assert proxy.targets == [] and [r.to for r in graph.requests] == [TO] and api.proxy is None


def test_the_process_heyoo_module_is_left_as_it_is():
    import heyoo

    assert heyoo.requests is requests and heyoo.logging is logging


CATALOG_URL = "http://graph.test/v99.0/102290129340398/message_templates"


def test_reads_the_template_catalog_page_by_page_to_the_last(api, requests_mock):
    """Meta's cursors are followed on our own URL; the last page (no `paging.next`) ends it, even
    though it still carries an `after` cursor."""
    requests_mock.get(CATALOG_URL, [
        {"json": {"data": [{"name": "a"}, {"name": "b"}], "paging": {"cursors": {"before": "QVFIa", "after": "QVFIb"}, "next": "https://elsewhere.test/next"}}},
        {"json": {"data": [{"name": "c"}], "paging": {"cursors": {"before": "QVFIc", "after": "QVFIc"}}}},
    ])
    pages = list(api.message_templates("102290129340398"))
    assert pages == [[{"name": "a"}, {"name": "b"}], [{"name": "c"}]]
    first, second = requests_mock.request_history
    assert first.headers["Authorization"] == "Bearer secret-token"
    assert "after" not in first.qs and "after=QVFIb" in second.url
    assert second.url.startswith(CATALOG_URL)  # the token never goes to the host `next` names


def test_a_catalog_error_is_typed(api, requests_mock):
    requests_mock.get(CATALOG_URL, status_code=401, json={"error": {"message": "Invalid OAuth access token", "code": 190}})
    with pytest.raises(errors.AccessTokenInvalid):
        list(api.message_templates("102290129340398"))


def test_a_catalog_that_repeats_a_page_is_refused(api, requests_mock):
    again = {"data": [{"name": "a"}], "paging": {"cursors": {"after": "QVFIa"}, "next": "http://graph.test/next"}}
    requests_mock.get(CATALOG_URL, json=again)
    with pytest.raises(errors.TransientError, match="repeated"):
        list(api.message_templates("102290129340398"))
