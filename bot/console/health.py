"""The console's account health page (SPEC §8): the number's quality and messaging limit and the
account's standing as Meta last reported them, Meta's notices newest first, and the webhook items
nobody could read, which anyone may inspect and operators mark handled (recording who and when)."""
from __future__ import annotations

import logging

from flask import Blueprint, abort, redirect, request, url_for

from bot.console import notice_words
from bot.console.access import current_staff, requires
from bot.console.rendering import render
from bot.domain.staff import Role
from bot.services import current_services
from bot.settings import masked_url
from bot.storage.forwarding import Destination, Summary
from bot.storage.notices import AccountNotices
from bot.storage.unread import UnreadWebhooks

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__, url_prefix="/health")

PAGE = 50  # notices, and unread items, on one page
FAILURES = 10  # the newest failed forwarded events shown


@bp.get("")
@requires(Role.VIEWER)
def health():
    notices = AccountNotices(current_services().engine)
    unread = UnreadWebhooks(current_services().engine)
    before = request.args.get("before", type=int)
    with_handled = request.args.get("handled") == "1"
    listed = notices.page(PAGE + 1, before)
    marked = request.args.get("marked", type=int)
    retried = request.args.get("retried", type=int)
    return render(
        "health", words=notice_words, quality=notices.newest("phone_number_quality_update"), account=notices.newest("account_update"),
        notices=listed[:PAGE], older=listed[PAGE - 1].id if len(listed) > PAGE else None, before=before,
        unread=unread.latest(PAGE, with_handled), waiting=unread.waiting(), with_handled=with_handled,
        may_handle=_may_handle(), forwarding=_forwarding(), failures=current_services().forward_queue.failures(FAILURES),
        notice=f"Item {marked} is marked handled." if marked else f"{retried} failed event(s) will be delivered again." if retried else None,
    )


@bp.post("/forwarding/retry")
@requires(Role.OPERATOR)
def retry_forwarding():
    """Deliver every failed event again (`flask forward retry`), each person's in their order."""
    count = current_services().forward_queue.retry_failed()
    log.info("console: %s asked for %d failed forwarded event(s) again", current_staff().email, count)
    return redirect(url_for(".health", retried=count))


def _forwarding() -> list[tuple[str, str | None, Summary]]:
    """(what, where, summary) of each destination that is set or has events: FORWARD_URL, BOT_HANDLERS."""
    settings = current_services().settings
    url = masked_url(settings.forward_url) if settings.forward_url else None
    where = {Destination.URL: ("FORWARD_URL", url), Destination.HANDLERS: ("BOT_HANDLERS", settings.bot_handlers)}
    return [
        (*where[summary.destination], summary) for summary in current_services().forward_queue.summary()
        if where[summary.destination][1] or summary.pending or summary.failed or summary.delivered
    ]


@bp.get("/unread/<int:item_id>")
@requires(Role.VIEWER)
def unread_item(item_id: int):
    item = UnreadWebhooks(current_services().engine).get(item_id)
    if item is None:
        abort(404, f"There is no unread webhook item {item_id}.")
    return render("unread_item", item=item, may_handle=_may_handle())


@bp.post("/unread/<int:item_id>/handled")
@requires(Role.OPERATOR)
def mark_handled(item_id: int):
    unread, staff = UnreadWebhooks(current_services().engine), current_staff()
    assert staff is not None  # requires() let only a signed-in operator in
    if unread.get(item_id) is None:
        abort(404, f"There is no unread webhook item {item_id}.")
    if unread.mark_handled(item_id, staff.recorded_by):
        log.info("console: %s marked unread webhook item %d handled", staff.email, item_id)
    return redirect(url_for(".health", marked=item_id))


def _may_handle() -> bool:
    """Whether the signed-in staff member may mark items handled: the buttons are shown only then."""
    staff = current_staff()
    return staff is not None and staff.role.covers(Role.OPERATOR)
