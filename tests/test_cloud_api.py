"""The Cloud API adapter, against the local Graph API imitation giving canned answers: URLs,
bodies, typed errors, timeouts, masked logs."""
from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from bot import graph_errors as errors
from bot.cloud_api import CloudApi
from tests.local_services import free_port

PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"
PATH = "/v99.0/106540352242922/messages"
TO = "16505551234"


def payload(name: str) -> dict:
    return json.loads((PAYLOADS / name).read_text())


@pytest.fixture
def api(graph) -> CloudApi:
    return CloudApi("secret-token", "106540352242922", base_url=graph.url + "/", version="v99.0")


def test_sends_text_to_the_configured_version_with_the_token(api, graph):
    graph.canned = (200, payload("graph_send_ok.json"))
    assert api.url == graph.url + PATH
    assert api.send_text(TO, "Hello") == "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBJBQkNERUYwMTIzNDU2Nzg5AA=="
    request = graph.requests[-1]
    assert request.headers["Authorization"] == "Bearer secret-token"
    assert request.body == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": TO,
        "type": "text", "text": {"preview_url": False, "body": "Hello"},
    }


def test_an_answer_slower_than_the_timeout_is_transient(graph):
    graph.latency = 1.0
    api = CloudApi("token", "106540352242922", base_url=graph.url, timeout=(1.0, 0.2))
    with pytest.raises(errors.TransientError, match="did not answer in time"):
        api.send_text(TO, "hi")


def test_sends_a_template_with_language_and_components(api, graph):
    graph.canned = (200, payload("graph_send_ok.json"))
    components = [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}]
    api.send_template(TO, "order_update", "en_US", components)
    assert graph.requests[-1].body["template"] == {
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
def test_meta_errors_become_typed_errors_by_code(api, graph, name, error_class, retry_after):
    body = payload(name)
    graph.canned = (400, body)
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
def test_every_meaningful_code_has_its_class(api, graph, code, error_class, retryable):
    graph.canned = (400, {"error": {"code": code, "message": f"(#{code})"}})
    with pytest.raises(errors.CloudApiError) as raised:
        api.send_text(TO, "hi")
    assert type(raised.value) is error_class and raised.value.retryable is retryable


def test_131049_waits_a_day():
    assert errors.EcosystemLimited.retry_after == timedelta(hours=24)


def test_code_is_matched_not_http_status(api, graph):
    graph.canned = (200, {"error": {"code": 130429, "message": "rate"}})
    with pytest.raises(errors.ThroughputLimited):
        api.send_text(TO, "hi")


@pytest.mark.parametrize(
    "canned",
    [
        (502, "<html>Bad gateway</html>"),
        (500, {"error": {"code": 2, "message": "Service temporarily unavailable"}}),
        (200, {"messaging_product": "whatsapp"}),
    ],
    ids=["html-502", "code-2", "no-id"],
)
def test_transport_failures_are_transient(api, graph, canned):
    graph.canned = canned
    with pytest.raises(errors.TransientError) as raised:
        api.send_text(TO, "hi")
    assert raised.value.retryable


def test_an_unreachable_api_is_transient():
    api = CloudApi("token", "106540352242922", base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(errors.TransientError, match="cannot reach"):
        api.send_text(TO, "hi")


def test_without_credentials_sending_fails_clearly():
    with pytest.raises(errors.NotConfigured, match="set WHATSAPP_TOKEN and WHATSAPP_PHONE_NUMBER_ID"):
        CloudApi(None, None).send_text(TO, "hi")


def test_connections_are_pooled_and_kept_alive(graph):
    """Against a real local HTTP/1.1 server: three sends, one TCP connection."""
    api = CloudApi("token", "106540352242922", base_url=graph.url)
    for text in ("one", "two", "three"):
        assert api.send_text(TO, text).startswith("wamid.")
    assert graph.connections == 1


def test_logs_never_hold_a_whole_number(api, graph, caplog):
    caplog.set_level(logging.DEBUG)
    graph.canned = (200, payload("graph_send_ok.json"))
    api.send_text(TO, "hi")
    graph.canned = (400, payload("graph_error_131047.json"))
    with pytest.raises(errors.WindowClosed):
        api.send_text(TO, "hi")
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "1234" in text and TO not in text
