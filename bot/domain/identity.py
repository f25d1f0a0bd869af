"""Who a user is to the business: a phone number (wa_id) or a business-scoped user id (BSUID).

Meta names a user by the digits of their E.164 number, by a BSUID (`US.13491208655302741918`:
their country, a dot, up to 128 letters and digits), by a parent BSUID shared across an
enterprise's portfolios (`US.ENT.…`), or by several of these at once. Every one is validated
once, at the edge, into the exact string the rest of the code compares.
"""
import enum
import re
import uuid

_SEPARATORS = re.compile(r"[\s().\-]")
_WA_ID = re.compile(r"[1-9][0-9]{6,14}")
_BSUID = re.compile(r"(?P<country>[A-Z]{2})\.(?P<parent>ENT\.)?[A-Za-z0-9]{1,128}")
MAX_IDENTIFIER = 2 + len(".ENT.") + 128  # the longest BSUID: what identifier columns hold

# ISO 3166-1 alpha-2, and XK (Kosovo), which telephone numbering uses.
COUNTRIES = frozenset("""
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO
FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE
JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO
MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW
PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM
TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS XK YE YT ZA ZM ZW
""".split())

# Persons that existed before identities did (one per wa_id) have an id derived from it, so
# that `flask consent verify` can check the person of every event recorded before then.
_LEGACY_PEOPLE = uuid.UUID("0f6a8f0e-5d1c-4f6b-9a54-2b1f1c0d7e31")


class IdentifierKind(str, enum.Enum):
    PHONE = "phone"
    USER_ID = "user_id"  # a BSUID
    PARENT_USER_ID = "parent_user_id"  # a parent BSUID (enterprise portfolios)


class InvalidIdentifier(ValueError):
    """Something that cannot name a WhatsApp user; the message says why without echoing it."""


class InvalidNumber(InvalidIdentifier):
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


def normalize_user_id(raw: object, parent: bool = False) -> str:
    """A BSUID exactly as Meta writes it (or a parent BSUID, with `parent`)."""
    what = "parent user id" if parent else "user id"
    if not isinstance(raw, str):
        raise InvalidIdentifier(f"{what} must be a string")
    found = _BSUID.fullmatch(raw)
    if found is None or found["country"] not in COUNTRIES:
        raise InvalidIdentifier(
            f"invalid {what} {mask(raw)!r}: expected a country code, a dot, then 1 to 128 letters and digits"
        )
    if bool(found["parent"]) != parent:
        raise InvalidIdentifier(f"{mask(raw)!r} is a {'user id' if parent else 'parent user id'}, not a {what}")
    return raw


def normalize_identifier(raw: object) -> str:
    """A phone number or a (parent) BSUID: whichever `raw` is written as."""
    if isinstance(raw, str) and _looks_like_bsuid(raw.strip()):
        raw = raw.strip()
        return normalize_user_id(raw, parent=raw[3:7] == "ENT.")
    return normalize_wa_id(raw)


def kind_of(identifier: str) -> IdentifierKind:
    """The kind of a normalized identifier."""
    if identifier[:1].isdigit():
        return IdentifierKind.PHONE
    return IdentifierKind.PARENT_USER_ID if identifier[3:7] == "ENT." else IdentifierKind.USER_ID


_KIND_ORDER = {IdentifierKind.PHONE: 0, IdentifierKind.USER_ID: 1, IdentifierKind.PARENT_USER_ID: 2}


def phones_first(identifier: str) -> tuple[int, str]:
    """Sort key: a person's phone, then their BSUID, then their parent BSUID."""
    return (_KIND_ORDER[kind_of(identifier)], identifier)


def _looks_like_bsuid(text: str) -> bool:
    return len(text) > 3 and text[:2].isalpha() and text[2] == "."


def new_person_id() -> str:
    return str(uuid.uuid4())


def legacy_person_id(wa_id: str) -> str:
    """The person an identifier recorded before identities existed became."""
    return str(uuid.uuid5(_LEGACY_PEOPLE, wa_id))


def mask(identifier: object) -> str:
    """What logs may show of a user: a phone's last 4 digits, a BSUID's country only."""
    text = str(identifier)
    if _looks_like_bsuid(text):
        return text[:3] + "*" * (len(text) - 3)
    if len(text) <= 4:
        return "*" * len(text)
    return "*" * (len(text) - 4) + text[-4:]


# A phone number as people and URLs write it: digits, perhaps a leading + (%2B), perhaps
# spaces, dashes or brackets between them (also percent-encoded): "+1 (650) 555-1234".
_SEPARATOR = r"(?:[-\s()]|%20|%2D|%28|%29)"
_NUMBER_IN_TEXT = re.compile(rf"(?<![0-9])(?:\+|%2B)?{_SEPARATOR}*[0-9](?:{_SEPARATOR}*[0-9]){{6,14}}(?![0-9])", re.IGNORECASE)
_NOT_DIGITS = re.compile(rf"{_SEPARATOR}|\+|%2B", re.IGNORECASE)
_DIGITS_ONLY = re.compile(r"(?<![0-9])[0-9]{7,15}(?![0-9])")
_BSUID_IN_TEXT = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}(?:\.|%2E)(?:ENT(?:\.|%2E))?[A-Za-z0-9]{6,128}(?![A-Za-z0-9])")


def mask_numbers(text: str) -> str:
    """Mask every phone number (a run of 7 to 15 digits) and BSUID in free text (a request line, say) as `mask` does."""
    text = _BSUID_IN_TEXT.sub(lambda found: found.group()[:2] + "." + "*" * (len(found.group()) - 3), text)
    return _NUMBER_IN_TEXT.sub(_masked_number, text)


def _masked_number(found: re.Match) -> str:
    """Its digits masked, when it is a phone number: digits alone, or written with a leading +
    or at least ten digits (so that a date such as 2026-10-01 stays readable)."""
    written = found.group()
    digits = _NOT_DIGITS.sub("", written)
    if digits == written or written[0] in "+%" or len(digits) >= 10:
        return mask(digits)
    return _DIGITS_ONLY.sub(lambda run: mask(run.group()), written)

