"""Review: the possible opt-outs ("please stop sending me this") waiting for staff, oldest
first, with the user's words; an operator confirms one as an opt-out or dismisses it, and both
are recorded in the ledger (bot.domain.review), so the decisions below the queue are its audit trail."""
from __future__ import annotations

from flask import Blueprint, abort, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from bot.console.access import requires, signed_in_staff
from bot.console.rendering import render
from bot.domain.consent import State
from bot.domain.identity import InvalidIdentifier, normalize_identifier
from bot.domain.review import Decision
from bot.domain.staff import Role
from bot.services import current_services
from bot.storage.ledger import SourceRefConflict
from bot.storage.review_queue import NotReviewable

bp = Blueprint("review", __name__, url_prefix="/review")

QUEUE_LIMIT = 50
DECIDED_LIMIT = 20
DONE = {
    Decision.CONFIRM.value: "Confirmed as an opt-out: {who} gets no more messages until they opt in again.",
    Decision.DISMISS.value: "Dismissed: {who}'s consent is unchanged.",
    "already": "That one was decided by someone else meanwhile: see the decisions below.",
}


@bp.get("")
@requires(Role.VIEWER)
def queue():
    services = current_services()
    items, waiting = services.review_queue.pending(QUEUE_LIMIT)
    states = services.ledger.states(item.possible.identifier for item in items) if items else {}
    return render(
        "review", items=items, waiting=waiting, decided=services.review_queue.decided(DECIDED_LIMIT),
        settled={item.possible.event_id for item in items if states[item.possible.identifier].state is State.OPTED_OUT},
        can_review=signed_in_staff().role.covers(Role.OPERATOR), done=_done(), who=_who(),
    )


@bp.post("/<event_id>")
@requires(Role.OPERATOR)
def decide(event_id: str) -> BaseResponse:
    try:
        decision = Decision(request.form.get("decision", ""))
    except ValueError:
        abort(400, "Choose to confirm or to dismiss.")
    try:
        event = current_services().review_queue.decide(event_id, decision, signed_in_staff().recorded_by)
    except NotReviewable:
        abort(404, "No possible opt-out has this id.")
    except SourceRefConflict:
        return redirect(url_for(".queue", done="already"))
    return redirect(url_for(".queue", done=decision.value, who=event.identifier))


def _who() -> str | None:
    try:
        return normalize_identifier(request.args.get("who"))
    except InvalidIdentifier:
        return None


def _done() -> str | None:
    done = DONE.get(request.args.get("done", ""))
    return done.format(who=_who() or "the person") if done else None
