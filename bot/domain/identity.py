"""WhatsApp ids (wa_id): the digits of an E.164 number, validated once at the edge."""
import hashlib
import re

_SEPARATORS = re.compile(r"[\s().\-]")
_WA_ID = re.compile(r"[1-9][0-9]{6,14}")


class InvalidNumber(ValueError):
    """A phone number that cannot be a WhatsApp id."""


def normalize_wa_id(raw: object) -> str:
    """Return the wa_id for a number written as staff write them (+, spaces, dashes)."""
    if not isinstance(raw, str):
        raise InvalidNumber("phone number must be a string of digits")
    digits = _SEPARATORS.sub("", raw.strip())
    if digits.startswith("+"):
        digits = digits[1:]
    elif digits.startswith("00"):
        digits = digits[2:]
    if not _WA_ID.fullmatch(digits):
        raise InvalidNumber(
            f"invalid phone number {mask(raw)!r}: expected 7 to 15 digits with country code, no leading 0"
        )
    return digits


def mask(number: object) -> str:
    """Hide all but the last 4 characters, so that logs never hold a whole number."""
    text = str(number)
    if len(text) <= 4:
        return "*" * len(text)
    return "*" * (len(text) - 4) + text[-4:]


_NUMBER_IN_TEXT = re.compile(r"(?<![0-9])[0-9]{7,15}(?![0-9])")


def mask_numbers(text: str) -> str:
    """Mask every run of 7 to 15 digits in free text (a request line, say) as `mask` does."""
    return _NUMBER_IN_TEXT.sub(lambda found: mask(found.group()), text)


def number_digest(wa_id: str) -> str:
    """A stable stand-in for a number inside keys that databases may print in their own logs."""
    return hashlib.sha256(wa_id.encode()).hexdigest()[:24]
