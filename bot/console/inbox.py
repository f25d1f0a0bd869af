"""Inbox (SPEC §9): people's conversations, the newest first with what is unread, and each one's
thread, both sides, where an operator replies (free-form while the 24-hour window is open, a
template when it is closed) and takes the conversation over, so that no plug-in answers it until
it is released (what is forwarded to the business's system says who handles it). A reply goes
the staff API's way (bot.staff.message_sends) through the consent gate, so both refuse the same
things for the same reasons. Opening a conversation marks it read, whatever the role; changing
anything needs the operator role."""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping

from flask import Blueprint, Response, abort, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from bot.console import template_form
from bot.console.access import requires, signed_in_staff
from bot.console.inbound_words import said_by_id
from bot.console.rendering import render
from bot.console.wording import actor_name, refused_reply
from bot.domain.consent import Action, ConsentEvent, ConsentState
from bot.domain.identity import InvalidIdentifier, normalize_identifier
from bot.domain.staff import Role
from bot.services import current_services
from bot.staff.message_sends import handled_by_another, stored_differently, submit_to_one
from bot.staff.request_rules import TEMPLATE_KINDS, InvalidField, message_request
from bot.storage.inbox import THREAD, Cursor, Inbox
from bot.storage.ledger import utc_now
from bot.storage.outbox import MessageState

bp = Blueprint("inbox", __name__, url_prefix="/inbox")

FILTERS = {"unread": "Unread", "mine": "Handled by me"}
DONE = {
    "taken": "You handle this conversation now: no plug-in answers it until you release it.",
    "released": "Released: automated replies answer this conversation again.",
}
FIELD_LABELS = {"text": "Reply", "template.components": "Template parameters", "template.name": "Template name",
                "template.language": "Language code", "category": "Category"}
KEYWORD_ACTIONS = (Action.OPT_OUT, Action.OPT_IN, Action.POSSIBLE_OPT_OUT)  # what a consent keyword records


def _inbox() -> Inbox:
    return Inbox(current_services().engine)


@bp.get("")
@requires(Role.VIEWER)
def inbox():
    show = request.args.get("show", "")
    older_token = request.args.get("older", "")
    older = Cursor.parse(older_token) if older_token else None
    if older_token and older is None:
        abort(404, "That page of the inbox does not exist. Start from the newest conversations.")
    mine = signed_in_staff().recorded_by if show == "mine" else None
    page = _inbox().page(older, unread_only=show == "unread", handled_by=mine)
    return render("inbox", listing=page, show=show if show in FILTERS else "", filters=FILTERS, paged=older is not None)


@bp.get("/<identifier>")
@requires(Role.VIEWER)
def conversation(identifier: str):
    return _conversation_page(*_person(identifier))


@bp.post("/<identifier>/reply")
@requires(Role.OPERATOR)
def reply(identifier: str) -> BaseResponse:
    """Send the reply a form describes, once however often the form is sent; back to the thread,
    which shows it queued or refused with the reason."""
    state, person = _person(identifier)
    try:
        nonce = uuid.UUID(request.form.get("request", ""))
    except ValueError:
        abort(400, "This form is incomplete. Go back, reload the page and try again.")
    outbox, sender = current_services().outbox, signed_in_staff().recorded_by
    try:
        message = message_request(_reply_body(state.address), current_services().replies)
        handler = handled_by_another(outbox, message, sender)
        if handler is not None:
            error = f"Not sent. {actor_name(handler)} handles this conversation: take it over to reply."
            return _conversation_page(state, person, 409, error=error, form=request.form)
        submission = submit_to_one(outbox, message, f"console:{nonce}", sender)
    except InvalidField as invalid:
        error = f"{FIELD_LABELS.get(invalid.field, invalid.field)}: {invalid.problem}."
        return _conversation_page(state, person, 422, error=error, form=request.form)
    if submission.message_id is None:  # refused before it was stored: no valid recipient
        return _conversation_page(state, person, 422, error=refused_reply(submission.reason and submission.reason.value, state), form=request.form)
    if stored_differently(outbox, submission.message_id, message):
        error = "This form was sent already, with other content. Reload the page to send another reply."
        return _conversation_page(state, person, 409, error=error, form=request.form)
    return redirect(url_for(".conversation", identifier=identifier, sent=submission.message_id, _anchor="reply"))


@bp.post("/<identifier>/take")
@requires(Role.OPERATOR)
def take(identifier: str) -> BaseResponse:
    _, person = _person(identifier)
    if not _inbox().take_over(person, signed_in_staff().recorded_by, utc_now()):
        abort(409, "They have never written: there is no conversation to take over.")
    return redirect(url_for(".conversation", identifier=identifier, done="taken"))


@bp.post("/<identifier>/release")
@requires(Role.OPERATOR)
def release(identifier: str) -> BaseResponse:
    _, person = _person(identifier)
    _inbox().release(person)
    return redirect(url_for(".conversation", identifier=identifier, done="released"))


def _person(raw: str) -> tuple[ConsentState, str]:
    """The state of the person an identifier names, and their person id; 404 for anyone else."""
    try:
        state = current_services().ledger.state(normalize_identifier(raw))
    except InvalidIdentifier:
        abort(404, "That is not a phone number or a BSUID.")
    if state.person_id is None:
        abort(404, "No one is known by this phone number or BSUID.")
    return state, state.person_id


def _reply_body(to: str) -> dict:
    """The form as the staff API's body: a text, or a template (from the catalog, or typed without one)."""
    form = request.form
    if "text" in form:
        return {"to": to, "text": form["text"].strip()}
    catalog = current_services().outbox.catalog
    entry = template_form.approved_entry(catalog, form.get("template", "")) if catalog is not None else None
    if catalog is not None and entry is None:
        abort(404, template_form.NOT_IN_CATALOG)
    return {"to": to, "template": template_form.template_body(entry, form)}


def _conversation_page(state: ConsentState, person: str, status: int = 200, **context) -> Response:
    """The thread, oldest first, and the reply form the window allows; marks what it shows read."""
    inbox, now = _inbox(), utc_now()
    entries = inbox.thread(person, state.identifiers)
    handling = inbox.handling(person)
    if handling is not None:
        inbox.mark_read(person, max((entry.inbound.changed_at for entry in entries if entry.inbound), default=None))
    window = state.window_open_until(now)
    form = context.pop("form", {})
    return render(
        "conversation", status, state=state, entries=entries, thread_limit=THREAD, handling=handling, now=now, window=window,
        said=said_by_id(entries), keyword_events=_keyword_events(current_services().ledger.history(state.address)),
        can_reply=signed_in_staff().role.covers(Role.OPERATOR), request_id=uuid.uuid4(), form=form,
        **({} if window else _template_choice(form or request.args)), **(context or _outcome(state)),
    )


def _template_choice(form: Mapping[str, str]) -> dict:
    """What the reply form offers outside the window: the catalog's approved templates, the chosen
    one's parameters, or (without a catalog) a template typed whole."""
    catalog = current_services().outbox.catalog
    if catalog is None:
        return {"typed": True, "kinds": tuple(TEMPLATE_KINDS), "lines_field": template_form.TEXT_LINES_FIELD}
    entry = template_form.approved_entry(catalog, form.get("template", ""))
    if entry is None:
        return {"approved": template_form.approved(catalog)}
    return {"entry": entry, "fields": template_form.parameter_fields(entry), "texts": template_form.part_texts(entry)}


def _outcome(state: ConsentState) -> dict[str, str]:
    """What the page says after a reply was sent (queued, or refused and why) or the conversation changed hands."""
    done = DONE.get(request.args.get("done", ""))
    if done:
        return {"notice": done}
    sent = current_services().outbox.get(request.args.get("sent", "")) if request.args.get("sent") else None
    if sent is None or (sent.person_id != state.person_id and sent.recipient not in state.identifiers):
        return {}
    if sent.state is MessageState.BLOCKED:
        return {"error": refused_reply(sent.reason, state)}
    return {"notice": "Sent to the queue: the reply is at the bottom of the conversation, with its state."}


def _keyword_events(history: Iterable[ConsentEvent]) -> dict[str, ConsentEvent]:
    """The consent events people's messages recorded, by the message's id: what a keyword did."""
    found: dict[str, ConsentEvent] = {}
    for event in history:
        if event.action not in KEYWORD_ACTIONS:
            continue
        confirmed = event.evidence.get("confirmed_by")  # a website opt-in, confirmed from WhatsApp
        message_id = confirmed.get("whatsapp_message_id") if isinstance(confirmed, Mapping) else event.evidence.get("message_id")
        if isinstance(message_id, str):
            found[message_id] = event
    return found
