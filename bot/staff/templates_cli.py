"""`flask templates sync` and `flask templates list`: Meta's template catalog (SPEC §7)."""
from __future__ import annotations

import click
from flask.cli import with_appcontext

from bot.services import current_services, sync_templates
from bot.staff.cli_group import DatabaseCommands, echo_table
from bot.storage.templates import SyncFailed


@click.group("templates", cls=DatabaseCommands)
def templates_cli() -> None:
    """The account's message templates, as Meta files them."""


@templates_cli.command("sync")
@with_appcontext
def sync() -> None:
    """Replace the catalog with Meta's now (the worker also does it every TEMPLATE_SYNC_SECONDS)."""
    try:
        count = sync_templates(current_services())
    except SyncFailed as failed:
        raise click.ClickException(str(failed)) from None
    click.echo(f"synced {count} template(s)")


@templates_cli.command("list")
@with_appcontext
def list_templates() -> None:
    """Show the catalog: name, language, category, status, quality, when synced."""
    entries = current_services().templates.all()
    if not entries:
        click.echo("no templates: run `flask templates sync` (needs WHATSAPP_BUSINESS_ACCOUNT_ID)")
        return
    rows = [("NAME", "LANGUAGE", "CATEGORY", "STATUS", "QUALITY", "SYNCED")] + [
        (t.name, t.language, t.category.lower(), t.status, t.quality or "-", t.synced_at.strftime("%Y-%m-%d %H:%M")) for t in entries
    ]
    echo_table(rows)
