"""WhatsApp ids and masking."""
from __future__ import annotations

import pytest

from bot.domain.identity import InvalidNumber, mask, mask_numbers, normalize_wa_id


@pytest.mark.parametrize(
    "raw", ["16505551234", "+1 650-555-1234", "+1 (650) 555.1234", "0016505551234", " 16505551234 "]
)
def test_numbers_as_staff_write_them_become_digits(raw):
    assert normalize_wa_id(raw) == "16505551234"


@pytest.mark.parametrize(
    "raw", ["", "123456", "0650555123", "1650555123456789", "+1 650 CALL NOW", "16505551234; DROP TABLE", 16505551234, None, "１６５０５５５１２３４"]
)
def test_malformed_numbers_are_refused_without_echoing_them(raw):
    with pytest.raises(InvalidNumber) as raised:
        normalize_wa_id(raw)
    if isinstance(raw, str) and len(raw) > 4:
        assert raw not in str(raised.value)


def test_mask_keeps_only_the_last_four_digits():
    assert mask("16505551234") == "*******1234"
    assert mask("123") == "***"


def test_numbers_in_free_text_are_masked():
    line = "GET /api/v1/consents/16505551234?wa_id=447700900123&page=2 HTTP/1.1"
    assert mask_numbers(line) == "GET /api/v1/consents/*******1234?wa_id=********0123&page=2 HTTP/1.1"
    assert mask_numbers("order 123456 at 2026-11-25") == "order 123456 at 2026-11-25"  # short runs stay


def test_the_access_log_masks_numbers_in_request_lines():
    from datetime import timedelta
    from types import SimpleNamespace

    from gunicorn.config import Config

    from bot.access_log import MaskedAccessLogger

    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/api/v1/consents/16505551234", "SERVER_PROTOCOL": "HTTP/1.1",
               "PATH_INFO": "/api/v1/consents/16505551234", "QUERY_STRING": "wa_id=16505551234"}
    response = SimpleNamespace(status="200 OK", headers=[], sent=10)
    atoms = MaskedAccessLogger(Config()).atoms(response, SimpleNamespace(headers=[]), environ, timedelta(seconds=0))
    assert "16505551234" not in " ".join(str(v) for v in atoms.values())
    assert atoms["r"] == "GET /api/v1/consents/*******1234 HTTP/1.1"
