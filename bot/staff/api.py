"""The staff API under /api/v1 (SPEC §4): record consent, send templates, run campaigns, export the ledger.

Every call needs `Authorization: Bearer <token>`: a staff member's token (`flask staff token
EMAIL`), which acts with their role and records what it causes as `staff:EMAIL`, or
ADMIN_API_TOKEN, the break-glass admin token (compared in constant time, recorded as
`staff:api`). Without either the API is off (403, saying how to turn it on). Reading needs
the viewer role; every POST records consent, sends or steers a campaign, and needs operator
(403 `forbidden` naming the role). Errors are `{"error", "detail"}`: 400 for a body that is
not JSON, 422 for a field that cannot be used, 409 for a send the policy refuses (with its
reason), 413 for an oversized body. An `Idempotency-Key` header makes a POST safe to repeat.
"""
from __future__ import annotations

import hmac
import uuid
from typing import NamedTuple

from flask import Blueprint, Response, g, jsonify, request

from bot import json_bodies
from bot.domain.consent import ConsentEvent, EventDraft, InvalidEvent
from bot.domain.policy import MessageKind, Refusal
from bot.domain.staff import Role
from bot.services import current_services
from bot.staff.audit_download import export_response
from bot.staff.message_sends import handled_by_another, stored_differently, submit_to_one
from bot.staff.openapi import openapi_document
from bot.staff.request_rules import (
    InvalidField,
    campaign_request,
    consent_draft,
    identifier_field,
    message_request,
    parameters_field,
)
from bot.storage.campaigns import CampaignIdTaken, CampaignRefused, Campaigns
from bot.storage.conversations import HANDLED_BY_STAFF
from bot.storage.ledger import SourceRefConflict, utc_now
from bot.storage.outbox import Outbox, Template

bp = Blueprint("staff_api", __name__, url_prefix="/api/v1")

RECORDED_BY = "staff:api"  # what the break-glass ADMIN_API_TOKEN records
READS = {"GET", "HEAD"}
MAX_CAMPAIGN_RECIPIENTS = 100_000


def api_error(status: int, code: str, detail: str, **extra) -> tuple[Response, int]:
    return jsonify(error=code, detail=detail, **extra), status


class Caller(NamedTuple):
    """Who a request comes from: the role it acts with and the name it records."""

    role: Role
    recorded_by: str


@bp.before_request
def require_token():
    if request.endpoint == "staff_api.openapi":
        return None
    caller = _caller()
    if not isinstance(caller, Caller):
        return caller
    needed = Role.VIEWER if request.method in READS else Role.OPERATOR
    if not caller.role.covers(needed):
        return api_error(403, "forbidden", f"this needs the {needed.value} role; this token's account is {caller.role.value}")
    g.api_caller = caller
    return None


def _caller() -> Caller | tuple[Response, int]:
    """The caller the bearer token names, or the answer that refuses it."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip() if scheme.lower() == "bearer" else ""
    account = current_services().staff.by_token(given) if given else None
    if account is not None:
        return Caller(account.role, account.recorded_by) if account.active else _unauthorized("this token's staff account is disabled")
    admin_token = current_services().settings.admin_api_token
    if not admin_token:
        return api_error(
            403, "disabled", "no staff token was sent and ADMIN_API_TOKEN is not set: send 'Authorization: Bearer <token>' "
            "with a token from `flask staff token EMAIL`, or set ADMIN_API_TOKEN",
        )
    if given and hmac.compare_digest(given.encode(), admin_token.encode()):
        return Caller(Role.ADMIN, RECORDED_BY)
    return _unauthorized("missing or wrong 'Authorization: Bearer <token>' (a staff token or ADMIN_API_TOKEN)")


def _unauthorized(detail: str) -> tuple[Response, int]:
    response, status = api_error(401, "unauthorized", detail)
    response.headers["WWW-Authenticate"] = 'Bearer realm="staff API"'
    return response, status


def _recorded_by() -> str:
    """What this request's events, messages and campaigns are recorded as: `staff:EMAIL`, or `staff:api`."""
    return g.api_caller.recorded_by


@bp.errorhandler(InvalidField)
def invalid_field(error: InvalidField):
    return api_error(422, "invalid_field", str(error), field=error.field)


@bp.errorhandler(InvalidEvent)
def invalid_event(error: InvalidEvent):
    if isinstance(error, SourceRefConflict):
        return api_error(409, "idempotency_key_reused", str(error))
    return api_error(422, "invalid_event", str(error))


class MalformedJson(Exception):
    """The body is not JSON at all (as opposed to JSON with a bad field, a 422)."""


@bp.errorhandler(MalformedJson)
def malformed_json(error: MalformedJson):
    return api_error(400, "malformed_json", f"the body must be a JSON object: it is {error}")


def _json_body() -> object:
    try:
        return json_bodies.loads(request.get_data(cache=False))
    except json_bodies.UnreadableJson as unreadable:
        raise MalformedJson(str(unreadable)) from None


def _given_key() -> str:
    given = request.headers.get("Idempotency-Key", "").strip()
    if len(given) > 200:
        raise InvalidField("Idempotency-Key", "must be at most 200 characters")
    return given


def _request_key(prefix: str) -> str:
    """The idempotency key: the caller's `Idempotency-Key`, or a fresh one (each call is new)."""
    return f"{prefix}:{_given_key() or uuid.uuid4()}"


# -- consent ---------------------------------------------------------------------------------


@bp.post("/consents")
def record_consent():
    draft = consent_draft(_json_body(), _request_key("api"), _recorded_by())
    event = current_services().ledger.append(draft)
    if not _records(event, draft):
        return api_error(409, "idempotency_key_reused", "this Idempotency-Key was used for a consent event with other content")
    return jsonify(event.as_dict()), 201


def _records(event: ConsentEvent, draft: EventDraft) -> bool:
    """Whether the event the ledger holds under the draft's key is what the draft asks for (a
    repeat), compared as recorded: an omitted time is the moment of recording, whenever that was."""
    occurred = event.occurred_at if draft.occurred_at is None else min(draft.occurred_at, event.recorded_at)
    text = draft.consent_text.replace("\x00", "\ufffd") if draft.consent_text else draft.consent_text
    asked = (draft.identifier, draft.action, draft.scope, draft.channel, text, draft.evidence, occurred)
    return asked == (event.identifier, event.action, event.scope, event.channel, event.consent_text, event.evidence, event.occurred_at)


@bp.get("/consents/<wa_id>")
def consent_state(wa_id: str):
    """By phone number or BSUID: the path's `wa_id` takes either (SPEC §6)."""
    identifier = identifier_field(wa_id)
    ledger = current_services().ledger
    state = ledger.state(identifier)
    window = state.window_open_until(utc_now())
    return jsonify(
        wa_id=state.wa_id, user_id=state.user_id, person_id=state.person_id, identifiers=list(state.identifiers),
        state=state.state.value, marketing=state.marketing.value,
        window_open_until=window.isoformat() if window else None,
        consent_event_id=state.consent_event.event_id if state.consent_event else None,
        opt_out_notice_given=state.notice_event is not None,
        history=[event.as_dict() for event in ledger.history(identifier)],
    )


@bp.get("/audit")
def audit():
    return export_response(current_services().ledger, request.args)


# -- messages --------------------------------------------------------------------------------


@bp.post("/messages")
def send_message():
    message = message_request(_json_body(), current_services().replies)
    outbox = current_services().outbox
    staff = handled_by_another(outbox, message, _recorded_by())
    if staff is not None:
        return api_error(
            409, "not_allowed", f"{staff} handles this conversation in the console: no automated reply until it is released",
            reason=HANDLED_BY_STAFF,
        )
    categories = _categories(outbox, message.template, message.kind) if message.template else {}
    submission = submit_to_one(outbox, message, _request_key("api"), _recorded_by())
    if _given_key() and stored_differently(outbox, submission.message_id, message):
        return api_error(409, "idempotency_key_reused", "this Idempotency-Key was used for a message with another recipient or content")
    if not submission.queued:
        return api_error(
            409, "not_allowed", f"the policy refuses this message: {submission.reason.value}",
            reason=submission.reason.value, id=submission.message_id, **categories,
        )
    return jsonify(id=submission.message_id, status="queued", **categories), 202


def _categories(outbox: Outbox, template: Template, claimed: MessageKind) -> dict[str, str]:
    """The category Meta's catalog gives the template (what the policy decided on), and the
    caller's, noted when it says otherwise; nothing without a catalog or for a template not in it."""
    true_kind = outbox.template_verdict(template)
    if not isinstance(true_kind, MessageKind):
        return {}
    return {"category": true_kind.value} | ({"category_claimed": claimed.value} if true_kind is not claimed else {})


@bp.get("/messages/<message_id>")
def message_state(message_id: str):
    stored = current_services().outbox.get(message_id)
    if stored is None:
        return api_error(404, "not_found", "no message has this id")
    event: ConsentEvent | None = None
    if stored.consent_event_id:
        event = current_services().ledger.event(stored.consent_event_id)
    return jsonify(
        id=stored.id, to=stored.recipient, person_id=stored.person_id, sent_to=stored.sent_to,
        kind=stored.kind.value, state=stored.state.value,
        reason=stored.reason, error_code=stored.error_code, meta_message_id=stored.meta_message_id,
        campaign_id=stored.campaign_id, consent_event=event.as_dict() if event else None,
    )


# -- campaigns -------------------------------------------------------------------------------


def _campaigns() -> Campaigns:
    return current_services().campaigns


@bp.post("/campaigns")
def start_campaign():
    template, kind, recipients, dry_run = campaign_request(_json_body(), MAX_CAMPAIGN_RECIPIENTS)
    campaign_id = str(uuid.uuid5(uuid.NAMESPACE_URL, _request_key("campaign")))
    outbox = current_services().outbox
    parameters_field(template, outbox.catalog)
    refusal = outbox.template_verdict(template)
    if isinstance(refusal, Refusal) and not dry_run:  # Meta's catalog: no such template, or not approved
        return api_error(409, "not_allowed", f"no campaign can start: {refusal.value}", reason=refusal.value)
    categories = _categories(outbox, template, kind)
    try:
        result = _campaigns().send(template, kind, recipients, _recorded_by(), dry_run, campaign_id)
    except CampaignIdTaken as taken:
        return api_error(409, "idempotency_key_reused", f"this Idempotency-Key was used for another campaign: {taken}")
    if result.campaign_id is None and not dry_run:
        return api_error(409, "not_allowed", f"no campaign can start: {_campaigns().account_flag()}", reason="paused", **result.as_dict())
    return jsonify(dry_run=dry_run, **result.as_dict(), **categories), 200 if dry_run else 202


@bp.get("/campaigns/<campaign_id>")
def campaign_progress(campaign_id: str):
    progress = _campaigns().progress(campaign_id)
    if progress is None:
        return api_error(404, "not_found", "no campaign has this id")
    return jsonify(progress.as_dict())


@bp.post("/campaigns/<campaign_id>/pause")
def pause_campaign(campaign_id: str):
    if _campaigns().progress(campaign_id) is None:
        return api_error(404, "not_found", "no campaign has this id")
    try:
        return jsonify(_campaigns().pause_by_staff(campaign_id, _recorded_by()).as_dict())
    except CampaignRefused as refused:  # finished: nothing of it is left to hold back
        return api_error(409, "not_allowed", str(refused))


@bp.post("/campaigns/<campaign_id>/resume")
def resume_campaign(campaign_id: str):
    if _campaigns().progress(campaign_id) is None:
        return api_error(404, "not_found", "no campaign has this id")
    try:
        return jsonify(_campaigns().resume(campaign_id).as_dict())
    except CampaignRefused as refused:
        return api_error(409, "not_allowed", str(refused), reason="paused")


@bp.get("/templates")
def list_templates():
    return jsonify([template.as_dict() for template in current_services().templates.all()])


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())
