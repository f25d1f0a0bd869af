"""Command line for staff and operators: `flask consent ...`, `flask keywords ...` and `flask db ...` (SPEC §4)."""
from __future__ import annotations

import errno
import os
import sys
import tempfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import overload

import click
from flask.cli import with_appcontext

from bot.domain.consent import ConsentEvent, EventDraft
from bot.domain.identity import InvalidIdentifier, normalize_identifier
from bot.domain.keywords import WORD_INTENTS
from bot.services import current_services
from bot.staff.audit import FORMATS, export_lines
from bot.staff.cli_group import DatabaseCommands
from bot.staff.consent_import import BadFile, Row, read_rows
from bot.staff.progress import progress_bar
from bot.staff.request_rules import InvalidField, timestamp_field
from bot.storage.integrity import CheckpointError, checkpoint_directory, load_checkpoints, write_checkpoint
from bot.storage.ledger import Ledger, utc_now
from bot.storage.migrate import current_revision, head_revision, upgrade

IMPORT_BATCH = 500  # rows recorded per transaction


def _ledger() -> Ledger:
    return current_services().ledger


@overload
def _identifier(raw: str) -> str: ...
@overload
def _identifier(raw: None) -> None: ...
def _identifier(raw: str | None) -> str | None:
    """A phone number as staff write them (+1 (650) 555-1234), or a BSUID."""
    try:
        return normalize_identifier(raw) if raw is not None else None
    except InvalidIdentifier as error:
        raise click.ClickException(str(error)) from None


def _describe(event: ConsentEvent | None) -> str:
    if event is None:
        return "-"
    return f"seq {event.seq} ({event.action.value}, {event.channel.value}, {event.occurred_at.isoformat()})"


class IsoTime(click.ParamType):
    """An ISO 8601 time as the staff API takes it, except that one without a zone is read as UTC."""

    name = "time"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return timestamp_field(value, param.name if param else "time", naive_is_utc=True)
        except InvalidField as error:
            self.fail(error.problem, param, ctx)


@click.group("consent", cls=DatabaseCommands)
def consent_cli() -> None:
    """Look at, export and verify the consent ledger."""


@consent_cli.command("show")
@click.argument("wa_id_or_user_id")
@with_appcontext
def show(wa_id_or_user_id: str) -> None:
    """Print a person's current consent state and full history (by phone number or BSUID)."""
    identifier = _identifier(wa_id_or_user_id)
    state, history = _ledger().state(identifier), _ledger().history(identifier)
    window = state.window_open_until(utc_now())
    click.echo(f"wa_id:        {state.wa_id or '-'}")
    click.echo(f"user_id:      {state.user_id or '-'}")
    click.echo(f"identifiers:  {', '.join(state.identifiers) or '- (names nobody yet)'}")
    click.echo(f"state:        {state.state.value}")
    click.echo(f"marketing:    {state.marketing.value}")
    click.echo(f"window:       {'open until ' + window.isoformat() if window else 'closed'}")
    click.echo(f"based on:     {_describe(state.consent_event)}")
    click.echo(f"stop notice:  {_describe(state.notice_event)}")
    click.echo(f"history:      {len(history)} event(s)")
    for event in history:
        click.echo(
            f"  {event.seq:>8}  {event.occurred_at.isoformat()}  {event.action.value:<20} {event.scope.value:<9} "
            f"{event.channel.value:<20} under {event.identifier}  by {event.recorded_by}  ref {event.source_ref}"
        )


@consent_cli.command("export")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True)
@click.option("-o", "--output", default="-", help="File to write (default: standard output).")
@click.option("--since", type=IsoTime(), help="Only events that occurred at or after this ISO 8601 time (UTC if it has no zone).")
@click.option("--until", type=IsoTime(), help="Only events that occurred before this ISO 8601 time (UTC if it has no zone).")
@click.option("--wa-id", help="Only this person's events (a phone number or a BSUID).")
@with_appcontext
def export(fmt: str, output: str, since: datetime | None, until: datetime | None, wa_id: str | None) -> None:
    """Export the ledger (every event with its evidence and hashes) as CSV or JSON Lines."""
    lines = export_lines(_ledger().events(since, until, _identifier(wa_id)), fmt)
    if output == "-":
        sys.stdout.writelines(lines)
        sys.stdout.flush()  # here, where a reader that stopped early (`| head`) ends the command quietly
        return
    try:
        _write_privately(Path(output), lines)
    except OSError as error:
        raise click.ClickException(f"cannot write {output}: {error.strerror or error}") from None


def _write_privately(path: Path, lines: Iterable[str]) -> None:
    """Write the export whole or not at all, readable by its owner only: it holds the ledger.
    A temporary file beside it takes the lines and replaces it at the end; on any failure the
    temporary file is removed, so no partial copy of the ledger is left lying about."""
    if path.is_dir() or str(path).endswith(os.sep):
        raise IsADirectoryError(errno.EISDIR, "is a directory: give a file name")
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")  # mode 0600
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as out:
            for line in lines:
                out.write(line)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


@consent_cli.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@with_appcontext
def import_csv(file: Path) -> None:
    """Record consent collected off WhatsApp from a CSV file with a header row.

    Columns: wa_id, channel (web, ivr, paper, sms, email, in_person, api), occurred_at
    (ISO 8601 with zone), and for opt-ins consent_text and evidence (a JSON object or a
    reference); optional action (opt_in, the default, or opt_out) and scope (all, marketing).
    Rows without consent evidence are rejected with their line and reason, the others are
    recorded; importing the same file again adds nothing. Exits 1 when any row was rejected.
    """
    rejected: list[Row] = []
    recorded = present = 0
    try:
        with file.open(newline="", encoding="utf-8-sig") as lines:
            total = max(sum(1 for _ in lines) - 1, 0)
            lines.seek(0)
            with progress_bar(total, f"importing {file.name}") as done:
                batch: list[EventDraft] = []
                for row in read_rows(lines):
                    if row.draft is None:
                        rejected.append(row)
                    else:
                        batch.append(row.draft)
                    if len(batch) == IMPORT_BATCH:
                        recorded, present = _record_batch(batch, recorded, present)
                        batch = []
                    done(row.line - 1)
                recorded, present = _record_batch(batch, recorded, present)
    except UnicodeDecodeError:
        raise click.ClickException(f"{file.name} is not UTF-8 text; save it as CSV UTF-8") from None
    except BadFile as error:
        raise click.ClickException(f"{file.name}: {error}") from None
    for row in rejected:
        click.echo(f"{file.name}:{row.line}: rejected: {row.problem}", err=True)
    summary = f"{recorded} recorded, {present} already in the ledger, {len(rejected)} rejected"
    if rejected:
        raise click.ClickException(summary)
    click.echo(summary)


def _record_batch(batch: list[EventDraft], recorded: int, present: int) -> tuple[int, int]:
    """Record one transaction's rows; returns the running counts (new, already present)."""
    if not batch:
        return recorded, present
    ledger = _ledger()
    fresh = {draft.source_ref for draft in batch} - ledger.recorded_refs(draft.source_ref for draft in batch)
    ledger.append_many(batch)
    return recorded + len(fresh), present + len(batch) - len(fresh)


@consent_cli.command("verify")
@click.option(
    "--checkpoints", type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A directory of signed checkpoints to hold the ledger against (default: LEDGER_CHECKPOINTS, when it is a directory that exists).",
)
@with_appcontext
def verify(checkpoints: Path | None) -> None:
    """Check the hash chain (keyed events with LEDGER_SIGNING_KEY) and hold it against the signed
    checkpoints; exit 1 naming the first sign of tampering."""
    services = current_services()
    given = checkpoints is not None
    if checkpoints is None:
        checkpoints = checkpoint_directory(services.settings.ledger_checkpoints)
    try:
        signed = load_checkpoints(checkpoints, services.ledger.key) if checkpoints else []
    except CheckpointError as error:
        raise click.ClickException(f"ledger verification FAILED: {error}") from None
    if given and not signed:  # a wrong directory must not pass for a check
        raise click.BadParameter("holds no checkpoint (*.json)", param_hint="--checkpoints")
    result = services.ledger.verify(signed)
    if not result.ok:
        raise click.ClickException(f"ledger verification FAILED after {result.checked} good event(s): {result.problem}")
    newest = result.newest
    against = (
        f"{result.checkpoints} signed checkpoint(s) agree, the newest of seq {newest.seq} at {newest.at.isoformat(timespec='seconds')}"
        if newest else "no signed checkpoint to hold it against"
    )
    click.echo(f"ledger OK: {result.checked} event(s), hash chain intact; {against}")


@consent_cli.command("checkpoint")
@with_appcontext
def checkpoint() -> None:
    """Sign the ledger head (seq and hash) and write it to LEDGER_CHECKPOINTS, outside the database."""
    ledger = _ledger()
    made = ledger.key.checkpoint(*ledger.head(), utc_now())
    try:
        where = write_checkpoint(made, current_services().settings.ledger_checkpoints)
    except CheckpointError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"checkpoint of seq {made.seq} written to {where}")


@click.group("keywords")
def keywords_cli() -> None:
    """Inspect the keyword configuration."""


@keywords_cli.command("check")
@with_appcontext
def check() -> None:
    """Validate the keyword file and the reply texts (the app refuses to start when they are broken)."""
    book = current_services().keywords
    click.echo(f"{book.path}: OK")
    for language in book.languages:
        counts = ", ".join(f"{len(book.words(language, intent))} {intent.value}" for intent in WORD_INTENTS)
        click.echo(f"  {language}: {counts}")
    click.echo("reply texts: every reply renders in every language and names the business")


@click.group("db", cls=DatabaseCommands, schema_checked=False)
def db_cli() -> None:
    """The database schema."""


@db_cli.command("upgrade")
@with_appcontext
def upgrade_command() -> None:
    """Bring the database schema to this version (the Procfile's release step)."""
    before, after = upgrade(current_services().engine)
    click.echo(f"database schema at {after}" + ("" if before == after else f" (was {before or 'none'})"))


@db_cli.command("current")
@with_appcontext
def current_command() -> None:
    """Print the database's schema revision and the one this code needs."""
    click.echo(f"database: {current_revision(current_services().engine) or 'none'}; this code: {head_revision()}")
