"""Command line for sending: `flask send template ...` and `flask campaign ...` (SPEC §4).

The same gate as the staff API: the policy decides, refusals name their reason, and the
worker process (`python -m bot.outbound.worker`) does the sending.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import click
from flask.cli import with_appcontext

from bot.domain.policy import MessageKind
from bot.services import current_services
from bot.staff.campaign_views import LIST_HEADER, list_row, status_report
from bot.staff.cli_group import DatabaseCommands
from bot.staff.progress import progress_bar
from bot.staff.recipient_lists import BadList, read_recipients
from bot.staff.request_rules import InvalidField, opt_in_question, parameters_field, template_field
from bot.staff.tables import echo_table
from bot.storage.campaigns import CampaignRefused, Campaigns, Progress
from bot.storage.outbox import Message, QueueName, Template

RECORDED_BY = "staff:cli"


def _template(name: str, language: str, category: str, components: str | None):
    try:
        parts = json.loads(components) if components else []
    except ValueError:
        raise click.BadParameter("must be a JSON list of Meta template components", param_hint="--components") from None
    try:
        template, kind = template_field({"name": name, "language": language, "category": category, "components": parts})
        parameters_field(template, current_services().outbox.catalog)
        return template, kind
    except InvalidField as error:
        raise click.ClickException(str(error)) from None


def template_options(command):
    for option in reversed([
        click.option("--language", default="en_US", show_default=True, help="Template language code."),
        click.option("--category", type=click.Choice(["marketing", "utility", "authentication"]), required=True),
        click.option("--components", help="Template components as JSON, as in Meta's template message."),
    ]):
        command = option(command)
    return command


@click.group("send", cls=DatabaseCommands)
def send_cli() -> None:
    """Send one message through the consent policy."""


@send_cli.command("template")
@click.argument("name")
@click.option("--to", "to", required=True, help="Recipient's number, with country code.")
@template_options
@with_appcontext
def send_template(name: str, to: str, language: str, category: str, components: str | None) -> None:
    """Queue the approved template NAME to one person; refused (exit 1) when the policy says no."""
    template, kind = _template(name, language, category, components)
    _note_category(template, kind)
    _queue(Message(to, kind, template=template))


@send_cli.command("opt-in-question")
@click.option("--to", "to", required=True, help="Recipient's number (or BSUID); they must have written in the last 24 hours.")
@click.option("--language", help="One of the keyword file's languages (default: its first).")
@with_appcontext
def send_opt_in_question(to: str, language: str | None) -> None:
    """Ask one person whether they want offers ("Reply YES ..."); their yes is an opt-in to that text."""
    replies = current_services().replies
    try:
        message = opt_in_question(to, "opt_in", language or replies.keywords.languages[0], replies)
    except InvalidField as error:
        raise click.ClickException(str(error)) from None
    _queue(message)


def _note_category(template: Template, claimed: MessageKind) -> None:
    """Say when Meta's catalog files the template under another category: that one decides (SPEC §7)."""
    true_kind = current_services().outbox.template_verdict(template)
    if isinstance(true_kind, MessageKind) and true_kind is not claimed:
        click.echo(f"note: Meta files {template.name} ({template.language}) as {true_kind.value}, not {claimed.value}: consent is decided on {true_kind.value}")


def _queue(message: Message) -> None:
    submission = current_services().outbox.submit(message, f"cli:{uuid.uuid4()}", RECORDED_BY, QueueName.REPLIES)
    if not submission.queued:
        assert submission.reason is not None, "a refused submission has its reason"
        raise click.ClickException(f"not sent: {submission.reason.value}")
    click.echo(f"queued message {submission.message_id}")


@click.group("campaign", cls=DatabaseCommands)
def campaign_cli() -> None:
    """Send a template to a list, watch it, pause and resume it."""


def _campaigns() -> Campaigns:
    return current_services().campaigns


@campaign_cli.command("send")
@click.argument("name")
@click.option("--recipients", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="CSV file: a wa_id column (or a single column of numbers).")
@template_options
@click.option("--dry-run", is_flag=True, help="Count what would be queued and skipped; queue nothing.")
@with_appcontext
def campaign_send(name: str, recipients: Path, language: str, category: str, components: str | None, dry_run: bool) -> None:
    """Send the approved template NAME to every consenting number in the file."""
    template, kind = _template(name, language, category, components)
    _note_category(template, kind)
    entries = _read_entries(recipients)
    with progress_bar(len(entries), "dry run" if dry_run else "queuing") as done:
        result = _campaigns().send(template, kind, entries, RECORDED_BY, dry_run, progress=done)
    skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(result.skipped.items())) or "none"
    head = "dry run" if dry_run else f"campaign {result.campaign_id}"
    click.echo(
        f"{head}: {len(entries)} listed: {result.queued} queued, skipped: {skipped}; "
        f"{result.duplicates} duplicate(s), {result.blank} blank row(s)"
    )
    if not dry_run and result.campaign_id is None:
        raise click.ClickException(f"nothing queued: {_campaigns().account_flag() or skipped}")


@campaign_cli.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many campaigns to show.")
@with_appcontext
def campaign_list(limit: int) -> None:
    """Show the newest campaigns: template, state and where their messages are."""
    newest = _campaigns().newest(limit + 1)
    if not newest:
        click.echo("no campaigns yet: `flask campaign send` starts one")
        return
    echo_table(LIST_HEADER, [list_row(summary) for summary in newest[:limit]])
    if len(newest) > limit:
        click.echo(f"(the newest {limit}; --limit shows more)")


@campaign_cli.command("status")
@click.argument("campaign_id")
@with_appcontext
def campaign_status(campaign_id: str) -> None:
    """Show where every entry of a campaign's list went, and its opt-outs since sending."""
    progress = _campaigns().progress(campaign_id)
    if progress is None:
        raise click.ClickException(f"no campaign {campaign_id}")
    for line in status_report(progress, _campaigns().max_opt_out_rate, _campaigns().min_reached):
        click.echo(line)


@campaign_cli.command("pause")
@click.argument("campaign_id")
@with_appcontext
def campaign_pause(campaign_id: str) -> None:
    """Pause a campaign: its queued messages wait for `flask campaign resume` (refused once it is finished)."""
    _change(campaign_id, lambda campaign: _campaigns().pause_by_staff(campaign, RECORDED_BY))


@campaign_cli.command("resume")
@click.argument("campaign_id")
@with_appcontext
def campaign_resume(campaign_id: str) -> None:
    """Resume a paused campaign (refused while Meta flags the number)."""
    _change(campaign_id, _campaigns().resume)


def _change(campaign_id: str, change: Callable[[str], Progress]) -> None:
    """Pause or resume, with the same rules as the staff API; a refusal exits 1 with its reason."""
    if _campaigns().progress(campaign_id) is None:
        raise click.ClickException(f"no campaign {campaign_id}")
    try:
        progress = change(campaign_id)
    except CampaignRefused as refused:
        raise click.ClickException(str(refused)) from None
    click.echo(f"campaign {campaign_id}: {progress.status.value}, {progress.states.get('queued', 0)} queued")


def _read_entries(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            return read_recipients(file, path.name)
    except BadList as bad:
        raise click.ClickException(str(bad)) from None
