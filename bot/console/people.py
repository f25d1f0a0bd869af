"""People: find a person by phone or BSUID, read their consent (state, window, identifiers,
history with evidence, messages) and, as an operator, record an opt-in or opt-out they gave
off WhatsApp. A console form is read by the staff API's rules (bot.staff.request_rules), so
both refuse the same things with the same reasons."""
from __future__ import annotations

import uuid

from flask import Blueprint, abort, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from bot.console.access import requires, signed_in_staff
from bot.console.rendering import render
from bot.console.wording import CHANNELS
from bot.domain.consent import Action, InvalidEvent, Scope
from bot.domain.identity import InvalidIdentifier, normalize_identifier
from bot.domain.staff import Role
from bot.services import current_services
from bot.staff.request_rules import STAFF_CHANNELS, InvalidField, consent_draft, timestamp_field
from bot.storage.ledger import utc_now
from bot.storage.message_log import messages_of

bp = Blueprint("people", __name__, url_prefix="/people")

MESSAGE_LIMIT = 100  # the latest ones; older messages are in the audit export
FIELD_LABELS = {"consent_text": "Consent text", "channel": "Where it was collected", "scope": "What it covers",
                "evidence": "Evidence", "occurred_at": "When"}
RECORDED = {Action.OPT_IN.value: "Opt-in recorded.", Action.OPT_OUT.value: "Opt-out recorded."}


@bp.get("")
@requires(Role.VIEWER)
def search():
    """The search form; a known person's page straight away."""
    query = request.args.get("q", "").strip()
    if not query:
        return render("people_search", query="")
    try:
        identifier = normalize_identifier(query)
    except InvalidIdentifier as invalid:
        return render("people_search", 422, query=query, error=f"{str(invalid).capitalize()}.")
    if current_services().ledger.state(identifier).person_id is None:
        return render("people_search", query=query, unknown=identifier)
    return redirect(url_for(".person", identifier=identifier))


@bp.get("/<identifier>")
@requires(Role.VIEWER)
def person(identifier: str):
    done = RECORDED.get(request.args.get("recorded", ""))
    return _person_page(_identifier(identifier), notice=done)


@bp.post("/<identifier>/consent")
@requires(Role.OPERATOR)
def record(identifier: str) -> BaseResponse:
    """Record the opt-in or opt-out a form describes; the form again, with the reason, when it cannot be."""
    identifier = _identifier(identifier)
    form = request.form
    try:
        nonce = uuid.UUID(form.get("request", ""))
    except ValueError:
        abort(400, "This form is incomplete. Go back, reload the page and try again.")
    try:
        draft = consent_draft(_consent_body(identifier), f"console:{nonce}", signed_in_staff().recorded_by)
        event = current_services().ledger.append(draft)
    except InvalidField as invalid:
        return _person_page(identifier, 422, error=f"{FIELD_LABELS.get(invalid.field, invalid.field)}: {invalid.problem}.", form=form)
    except InvalidEvent as invalid:
        return _person_page(identifier, 422, error=f"{str(invalid).capitalize()}.", form=form)
    return redirect(url_for(".person", identifier=identifier, recorded=event.action.value, _anchor=f"event-{event.event_id}"))


def _consent_body(identifier: str) -> dict:
    """The form as the staff API's body: the same fields, checked by the same rules."""
    form = request.form
    body: dict = {"wa_id": identifier, "action": form.get("action"), "channel": form.get("channel"), "scope": form.get("scope", "all")}
    if form.get("consent_text", "").strip():
        body["consent_text"] = form["consent_text"]
    body["evidence"] = {field: form[field].strip() for field in ("reference", "note") if form.get(field, "").strip()}
    if form.get("occurred_at", "").strip():  # the form's date and time have no zone: they are UTC, as the page says
        body["occurred_at"] = timestamp_field(form["occurred_at"], "occurred_at", naive_is_utc=True).isoformat()
    return body


def _identifier(raw: str) -> str:
    try:
        return normalize_identifier(raw)
    except InvalidIdentifier:
        abort(404, "That is not a phone number or a BSUID.")


def _person_page(identifier: str, status: int = 200, **context):
    services = current_services()
    state = services.ledger.state(identifier)
    known = state.person_id is not None
    history = services.ledger.history(identifier) if known else []
    messages = messages_of(services.engine, state.person_id, state.identifiers, MESSAGE_LIMIT) if state.person_id else []
    now = utc_now()
    return render(
        "person", status, identifier=identifier, state=state, window=state.window_open_until(now), now=now,
        history=list(reversed(history)), events={event.event_id: event for event in history}, messages=messages,
        message_limit=MESSAGE_LIMIT, channels=[(channel.value, CHANNELS[channel]) for channel in STAFF_CHANNELS],
        scopes=[scope.value for scope in Scope], request_id=uuid.uuid4(),
        can_record=signed_in_staff().role.covers(Role.OPERATOR), form=context.pop("form", {}), **context,
    )
