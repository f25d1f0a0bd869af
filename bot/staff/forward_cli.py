"""`flask forward status` and `flask forward retry`: events for the business's systems (SPEC §9)."""
from __future__ import annotations

import click
from flask.cli import with_appcontext

from bot.services import current_services
from bot.settings import masked_url
from bot.staff.cli_group import DatabaseCommands
from bot.staff.tables import echo_table
from bot.storage.forwarding import Destination

WHERE = {Destination.URL: "FORWARD_URL", Destination.HANDLERS: "BOT_HANDLERS"}


@click.group("forward", cls=DatabaseCommands)
def forward_cli() -> None:
    """Inbound messages, statuses and consent changes forwarded to FORWARD_URL and BOT_HANDLERS."""


@forward_cli.command("status")
@with_appcontext
def status() -> None:
    """Per destination: pending (and since when), failed, delivered in the last 7 days, the last error."""
    settings = current_services().settings
    configured = {Destination.URL: settings.forward_url, Destination.HANDLERS: settings.bot_handlers}
    rows = []
    for summary in current_services().forward_queue.summary():
        where = configured[summary.destination]
        if where is None and not (summary.pending or summary.failed or summary.delivered):
            continue
        oldest = summary.oldest_pending.strftime("%Y-%m-%d %H:%M:%S") if summary.oldest_pending else "-"
        error = f"{summary.last_error} ({summary.last_error_at:%Y-%m-%d %H:%M})" if summary.last_error and summary.last_error_at else "-"
        counts = (str(summary.pending), oldest, str(summary.failed), str(summary.delivered))
        rows.append((WHERE[summary.destination], masked_url(where) if where else "(not set)", *counts, error))
    if not rows:
        click.echo("nothing is forwarded: set FORWARD_URL (and FORWARD_SECRET) or BOT_HANDLERS")
        return
    echo_table(("DESTINATION", "WHERE", "PENDING", "OLDEST PENDING", "FAILED", "DELIVERED 7D", "LAST ERROR"), rows)


@forward_cli.command("retry")
@click.option("--destination", type=click.Choice([d.name.lower() for d in Destination]), help="only this one (url or handlers)")
@with_appcontext
def retry(destination: str | None) -> None:
    """Deliver the failed events again, from now, each person's in their order."""
    chosen = Destination[destination.upper()] if destination else None
    count = current_services().forward_queue.retry_failed(chosen)
    click.echo(f"{count} failed event(s) pending again" if count else "no failed events")
