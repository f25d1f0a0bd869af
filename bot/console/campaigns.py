"""The console's campaigns (SPEC §8): the list, and each campaign's page with where its messages
are (updated live by static/campaign_progress.js from progress.json; without script a reload
does it), its opt-out rate over time, its failures by Meta error code, pause and resume, and
the per-recipient CSV. Reading needs the viewer role, pausing and resuming the operator role."""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator

from flask import Blueprint, Response, abort, jsonify, redirect, request, stream_with_context, url_for
from werkzeug.wrappers import Response as BaseResponse

from bot.console.access import requires, signed_in_staff
from bot.console.opt_out_chart import chart, moments
from bot.console.rendering import render
from bot.domain.staff import Role
from bot.outbound.graph_errors import meaning
from bot.services import current_services
from bot.storage.campaign_reports import RECIPIENT_COLUMNS, CampaignReports
from bot.storage.campaigns import CampaignRefused, Campaigns, Progress
from bot.storage.outbox import MessageState

bp = Blueprint("campaigns", __name__, url_prefix="/campaigns")

LISTED = 50  # campaigns on the list page, newest first
FUNNEL = tuple(state.value for state in MessageState)  # queued, sent, delivered, read, failed, blocked
DONE = {"paused": "The campaign is paused: its queued messages wait.", "resumed": "The campaign runs again."}


def _campaigns() -> Campaigns:
    return current_services().campaigns


@bp.get("")
@requires(Role.VIEWER)
def campaigns():
    return render("campaigns", campaigns=_campaigns().newest(LISTED), funnel=FUNNEL, listed=LISTED)


@bp.get("/<campaign_id>")
@requires(Role.VIEWER)
def campaign(campaign_id: str):
    return _campaign_page(campaign_id, notice=DONE.get(request.args.get("done", "")))


@bp.get("/<campaign_id>/progress.json")
@requires(Role.VIEWER)
def progress(campaign_id: str):
    """What the campaign page's script shows, without reloading the page."""
    return jsonify(progress_fields(_progress(campaign_id)))


@bp.post("/<campaign_id>/pause")
@requires(Role.OPERATOR)
def pause(campaign_id: str):
    return _change(campaign_id, lambda campaign: _campaigns().pause_by_staff(campaign, signed_in_staff().recorded_by), "paused")


@bp.post("/<campaign_id>/resume")
@requires(Role.OPERATOR)
def resume(campaign_id: str):
    return _change(campaign_id, _campaigns().resume, "resumed")


def _change(campaign_id: str, change: Callable[[str], Progress], done: str) -> BaseResponse:
    """Pause or resume, by the same rules as the CLI and the API; a refusal is shown on the campaign's page."""
    _progress(campaign_id)
    try:
        change(campaign_id)
    except CampaignRefused as refused:
        return _campaign_page(campaign_id, 409, error=f"Not {done}: {refused}.")
    return redirect(url_for(".campaign", campaign_id=campaign_id, done=done))


@bp.get("/<campaign_id>/recipients.csv")
@requires(Role.VIEWER)
def recipients(campaign_id: str):
    """Every recipient's message: one row each, streamed as it is read."""
    _progress(campaign_id)
    rows = CampaignReports(current_services().engine).recipients(campaign_id)
    response = Response(stream_with_context(_csv_lines(rows)), content_type="text/csv; charset=utf-8")
    response.headers["Content-Disposition"] = f'attachment; filename="campaign-{campaign_id}.csv"'
    return response


def progress_fields(progress: Progress) -> dict:
    """The campaign's counts, as the page shows them and its script updates them."""
    return {**progress.as_dict(), "reached": progress.reached, "opt_out_percent": f"{progress.opt_out_rate:.1%}"}


def _progress(campaign_id: str) -> Progress:
    found = _campaigns().progress(campaign_id)
    if found is None:
        abort(404, "There is no campaign with this id.")
    return found


def _campaign_page(campaign_id: str, status: int = 200, **messages: str | None) -> Response:
    progress = _progress(campaign_id)
    reports = CampaignReports(current_services().engine)
    failures = [(failure, meaning(failure.error_code)) for failure in reports.failures(campaign_id)]
    limit = _campaigns().max_opt_out_rate
    return render(
        "campaign", status, progress=progress, fields=progress_fields(progress), funnel=FUNNEL, failures=failures,
        chart=chart(moments(reports.reach(campaign_id)), limit), limit=limit, min_reached=_campaigns().min_reached,
        **messages,
    )


def _csv_lines(rows: Iterable[tuple], batch: int = 1000) -> Iterator[str]:
    buffer = io.StringIO()
    out = csv.writer(buffer)
    out.writerow(RECIPIENT_COLUMNS)
    for n, (*cells, sent_at) in enumerate(rows, 1):
        out.writerow([*cells, sent_at.isoformat() if sent_at else ""])
        if n % batch == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
