"""WhatsApp ids and masking."""
from __future__ import annotations

import pytest

from bot.phone import InvalidNumber, mask, normalize_wa_id


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
