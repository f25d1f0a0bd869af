"""A new campaign from the console: choose a template (from Meta's catalog when
WHATSAPP_BUSINESS_ACCOUNT_ID is set, else typed as the staff API takes it), give its parameters
and upload a CSV list; then a dry run shows who would be skipped and why, and "Send" starts it.
The upload waits in Redis (bot.console.campaign_drafts) between the two, so the send is of the
list the dry run counted. Operators and admins only; campaigns are recorded as `staff:EMAIL`."""
from __future__ import annotations

import io
import uuid

from flask import Blueprint, Response, abort, redirect, request, url_for
from werkzeug.datastructures import FileStorage

from bot.console import campaign_drafts
from bot.console.access import current_staff, requires
from bot.console.rendering import render
from bot.console.template_form import (
    NOT_IN_CATALOG,
    TEXT_LINES_FIELD,
    approved,
    approved_entry,
    parameter_fields,
    part_texts,
    template_body,
)
from bot.domain.policy import MessageKind
from bot.domain.staff import Role
from bot.services import current_services
from bot.staff.api import MAX_CAMPAIGN_RECIPIENTS
from bot.staff.recipient_lists import BadList, read_recipients
from bot.staff.request_rules import TEMPLATE_KINDS, InvalidField, parameters_field, template_field
from bot.storage.campaigns import CampaignIdTaken
from bot.storage.outbox import Template
from bot.storage.staff import StaffAccount
from bot.storage.templates import CatalogTemplate

bp = Blueprint("new_campaign", __name__, url_prefix="/campaigns")


@bp.get("/new")
@requires(Role.OPERATOR)
def choose():
    """The form: a template from the catalog (then its parameters and the list), or one typed."""
    catalog = current_services().outbox.catalog
    if catalog is None:
        return _typed_form()
    chosen = request.args.get("template")
    if not chosen:
        return render("new_campaign", approved=approved(catalog))
    return _catalog_form(_catalog_entry(chosen))


@bp.post("/new")
@requires(Role.OPERATOR)
def upload():
    """Read the template and the list; keep them for the dry run, or show the form again with why not."""
    catalog = current_services().outbox.catalog
    entry = _catalog_entry(request.form.get("template", "")) if catalog is not None else None
    again = (lambda error: _catalog_form(entry, error, 422)) if entry else (lambda error: _typed_form(error, 422))
    try:
        template, kind = _template(entry)
        parameters_field(template, catalog)
        entries = _entries(request.files.get("recipients"))
    except (InvalidField, BadList) as refused:
        return again(str(refused))
    draft = campaign_drafts.Draft(_staff().email, _file_name(request.files["recipients"]), template, kind, entries)
    draft_id = campaign_drafts.keep(current_services().redis, draft)
    return redirect(url_for(".dry_run", draft_id=draft_id))


@bp.get("/new/<draft_id>")
@requires(Role.OPERATOR)
def dry_run(draft_id: str):
    """What sending would do now: queued, and skipped per reason, with some of the skipped numbers."""
    draft = _draft(draft_id)
    result = current_services().campaigns.send(draft.template, draft.kind, draft.entries, _recorded_by(), dry_run=True)
    return render("dry_run", draft=draft, draft_id=draft_id, result=result)


@bp.post("/new/<draft_id>/send")
@requires(Role.OPERATOR)
def send(draft_id: str):
    """Start the campaign the dry run showed; sending the same draft again starts nothing new."""
    draft = _draft(draft_id)
    campaign_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"console-campaign:{draft_id}"))
    campaigns = current_services().campaigns
    try:
        result = campaigns.send(draft.template, draft.kind, draft.entries, _recorded_by(), campaign_id=campaign_id)
    except CampaignIdTaken as taken:  # cannot happen for a kept draft, which does not change; said plainly if it does
        abort(409, str(taken))
    if result.campaign_id is None:
        why = campaigns.account_flag() or ", ".join(sorted(result.skipped)) or "nothing to send"
        return render("dry_run", 409, draft=draft, draft_id=draft_id, result=result, error=f"No campaign was started: {why}.")
    return redirect(url_for("console.campaigns.campaign", campaign_id=result.campaign_id))


def _staff() -> StaffAccount:
    staff = current_staff()
    assert staff is not None, "requires() let a signed-in account in"
    return staff


def _recorded_by() -> str:
    return _staff().recorded_by


def _draft(draft_id: str) -> campaign_drafts.Draft:
    draft = campaign_drafts.load(current_services().redis, draft_id, _staff().email)
    if draft is None:
        abort(404, f"This upload is no longer kept (uploads wait {campaign_drafts.TTL // 60} minutes). Upload the list again.")
    return draft


def _catalog_entry(chosen: str) -> CatalogTemplate:
    entry = approved_entry(current_services().outbox.catalog, chosen)
    if entry is None:
        abort(404, NOT_IN_CATALOG)
    return entry


def _template(entry: CatalogTemplate | None) -> tuple[Template, MessageKind]:
    return template_field(template_body(entry, request.form))


def _entries(upload: FileStorage | None) -> list[str]:
    if upload is None or not upload.filename:
        raise BadList("choose a CSV file with a wa_id column")
    text = io.TextIOWrapper(upload.stream, encoding="utf-8-sig", newline="")
    entries = read_recipients(text, _file_name(upload))
    if not entries or len(entries) > MAX_CAMPAIGN_RECIPIENTS:
        raise BadList(f"{_file_name(upload)} has {len(entries)} rows: a campaign takes 1 to {MAX_CAMPAIGN_RECIPIENTS:,}")
    return entries


def _file_name(upload: FileStorage) -> str:
    return (upload.filename or "the file")[-100:]


def _catalog_form(entry: CatalogTemplate, error: str | None = None, status: int = 200) -> Response:
    return render(
        "new_campaign", status, entry=entry, fields=parameter_fields(entry), texts=part_texts(entry), form=request.form,
        max_recipients=MAX_CAMPAIGN_RECIPIENTS, error=error,
    )


def _typed_form(error: str | None = None, status: int = 200) -> Response:
    return render(
        "new_campaign", status, typed=True, kinds=tuple(TEMPLATE_KINDS), lines_field=TEXT_LINES_FIELD, form=request.form,
        max_recipients=MAX_CAMPAIGN_RECIPIENTS, error=error,
    )
