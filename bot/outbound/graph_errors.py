"""Cloud API errors as types, keyed on Meta's `error.code` (never on the HTTP status).

Each class says whether a send may be retried and how long to wait first, so the send job
never has to know Meta's numbers.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any


class CloudApiError(Exception):
    """A send the Cloud API did not accept. `retry_after` None means retrying cannot help."""

    retry_after: timedelta | None = None

    def __init__(self, message: str, code: int | None = None, details: str | None = None):
        super().__init__(message)
        self.code = code
        self.details = details

    @property
    def retryable(self) -> bool:
        return self.retry_after is not None


class NotConfigured(CloudApiError):
    """No WHATSAPP_TOKEN / WHATSAPP_PHONE_NUMBER_ID: nothing can be sent."""


class TransientError(CloudApiError):
    """Timeouts, connection failures, 5xx and Meta's temporary errors (1, 2, 131000, 131016, 133004)."""

    retry_after = timedelta(seconds=5)


class ThroughputLimited(TransientError):
    """130429: the phone number's messages/second cap was exceeded."""

    retry_after = timedelta(seconds=2)


class AppRateLimited(TransientError):
    """4 / 80007: the app's or the business account's call rate was exceeded."""

    retry_after = timedelta(minutes=1)


class PairRateLimited(TransientError):
    """131056: too many messages to the same user in a short time (about one per 6 s)."""

    retry_after = timedelta(seconds=6)


class SpamRateLimited(TransientError):
    """131048: Meta limits this number because of quality; back off for a long while."""

    retry_after = timedelta(minutes=30)


class EcosystemLimited(TransientError):
    """131049: Meta chose not to deliver this marketing message now; retry not before 24 h."""

    retry_after = timedelta(hours=24)


class WindowClosed(CloudApiError):
    """131047: more than 24 hours since the user last wrote; only templates may be sent."""


class MarketingOptedOut(CloudApiError):
    """131050: the user stopped marketing messages from this business inside WhatsApp."""


class Undeliverable(CloudApiError):
    """131026: the number is not on WhatsApp, or cannot receive this message."""


class NeedsPhoneNumber(CloudApiError):
    """131062: this kind of message (one-tap, zero-tap, copy-code authentication) cannot go to a BSUID."""


class TemplateError(CloudApiError):
    """132000-132999: the template does not exist, is paused, or its parameters do not fit."""


class AccessTokenInvalid(CloudApiError):
    """190: the access token expired or was revoked; fix WHATSAPP_TOKEN, then resend."""


class RequestRejected(CloudApiError):
    """Any other code: the request itself is wrong and would fail again."""


_BY_CODE: dict[int, type[CloudApiError]] = {
    1: TransientError,
    2: TransientError,
    4: AppRateLimited,
    80007: AppRateLimited,
    130429: ThroughputLimited,
    131000: TransientError,
    131016: TransientError,
    133004: TransientError,
    131056: PairRateLimited,
    131048: SpamRateLimited,
    131049: EcosystemLimited,
    131047: WindowClosed,
    131050: MarketingOptedOut,
    131026: Undeliverable,
    131062: NeedsPhoneNumber,
    190: AccessTokenInvalid,
}


def error_class(code: int | None) -> type[CloudApiError]:
    """The class for a Meta error code."""
    if code is None:
        return TransientError
    if 132000 <= code <= 132999:
        return TemplateError
    return _BY_CODE.get(code, RequestRejected)


def from_error_body(body: Any) -> CloudApiError:
    """Turn Meta's `{"error": {...}}` answer into its typed error."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return TransientError("the Cloud API answered without a message id or an error")
    code = error.get("code") if isinstance(error.get("code"), int) else None
    details = (error.get("error_data") or {}).get("details") if isinstance(error.get("error_data"), dict) else None
    message = str(error.get("message") or "Cloud API error")
    return error_class(code)(message, code=code, details=details)


# What Meta's common error codes mean, in words for staff reading a campaign's failures.
MEANINGS: dict[int, str] = {
    0: "Meta could not authenticate the app (AuthException)",
    1: "Meta's API had a temporary problem",
    2: "Meta's service was temporarily unavailable",
    4: "the app's call rate limit was reached",
    10: "the app lacks the permission for this (whatsapp_business_messaging)",
    100: "the request had an invalid or missing parameter",
    190: "the access token expired or was revoked (WHATSAPP_TOKEN)",
    368: "the account is temporarily blocked for policy violations",
    80007: "the business account's rate limit was reached",
    130429: "the phone number's messages-per-second limit was reached",
    130472: "the user's number is part of a Meta experiment that held back this marketing message",
    131000: "something went wrong at Meta",
    131005: "access denied: the token lacks the permission",
    131008: "a required parameter is missing",
    131009: "a parameter value is not valid",
    131016: "Meta's service was temporarily unavailable",
    131021: "the recipient is the sender's own number",
    131026: "the number is not on WhatsApp, or cannot receive this message (old app, terms not accepted)",
    131031: "the business account is locked or restricted",
    131042: "a payment problem on the business account",
    131045: "the phone number is not registered for the Cloud API",
    131047: "more than 24 hours since the user last wrote: only templates may be sent",
    131048: "Meta limits this number because too many users blocked or reported it (spam rate limit)",
    131049: "Meta held back this marketing message to keep the user's experience healthy",
    131050: "the user stopped marketing messages from this business inside WhatsApp",
    131051: "the message type is not supported",
    131052: "the user's media could not be downloaded",
    131053: "the media could not be uploaded",
    131056: "too many messages to the same user in a short time",
    131062: "this kind of message cannot be sent to a BSUID, only to a phone number",
    132000: "the template's parameter count does not match its text",
    132001: "the template does not exist in this language, or is not approved",
    132005: "the template's text with its parameters is too long",
    132007: "the template's content breaks WhatsApp's policy",
    132012: "a template parameter has the wrong format",
    132015: "the template is paused for low quality",
    132016: "the template is disabled for low quality",
    133004: "the server was temporarily unavailable",
    133010: "the phone number is not registered",
}


def meaning(code: int | None) -> str:
    """What a Meta error code means, for staff; for a code not listed, what kind of error it is."""
    if code is None:
        return "no error code (a timeout or a connection failure)"
    if code in MEANINGS:
        return MEANINGS[code]
    if error_class(code) is TemplateError:
        return "a template error: the template does not exist, is paused, or its parameters do not fit"
    return "not one of the common codes: see Meta's error code list"
