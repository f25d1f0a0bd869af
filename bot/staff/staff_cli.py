"""`flask staff add|token|disable|list`: who may use the console and the staff API (SPEC §8).

Whoever can run commands on the server manages staff: accounts and tokens made here are
recorded as made by `staff:cli`. Secrets are printed once and kept only as hashes.
"""
from __future__ import annotations

import click
from flask.cli import with_appcontext

from bot.domain.staff import Role
from bot.services import current_services
from bot.staff.cli_group import DatabaseCommands
from bot.staff.tables import echo_table
from bot.storage.staff import AccountRefused, StaffAccount, StaffAccounts

CREATED_BY = "staff:cli"
ROLES = "|".join(role.value for role in Role)


class StaffCommands(DatabaseCommands):
    """Database commands whose refusals (unknown address, duplicate, bad role) are one line, exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AccountRefused as refused:
            raise click.ClickException(str(refused)) from None


def _accounts() -> StaffAccounts:
    return current_services().staff


def _role(raw: str) -> Role:
    try:
        return Role(raw.strip().lower())
    except ValueError:
        raise AccountRefused(f"the role must be viewer, operator or admin, not {raw[:40]!r}") from None


@click.group("staff", cls=StaffCommands)
def staff_cli() -> None:
    """Staff accounts: viewer (reads), operator (also records consent, sends, runs campaigns), admin."""


@staff_cli.command("add")
@click.argument("email")
@click.option("--role", required=True, metavar=ROLES, help="viewer reads; operator also records consent, sends and runs campaigns; admin also manages staff.")
@with_appcontext
def add(email: str, role: str) -> None:
    """Make an account; prints its one-time password, which must be changed at first sign-in."""
    account, password = _accounts().add(email, _role(role), CREATED_BY)
    click.echo(f"added {account.email} ({account.role.value})")
    click.echo(f"one-time password, shown once (to be changed at first sign-in to /console): {password}")


@staff_cli.command("token")
@click.argument("email")
@with_appcontext
def token(email: str) -> None:
    """Make an API token that acts with the account's role; printed once, kept only as a hash."""
    account, issued = _accounts().issue_token(email, CREATED_BY)
    click.echo(f"API token for {account.email} ({account.role.value}), shown once: {issued}")


@staff_cli.command("disable")
@click.argument("email")
@with_appcontext
def disable(email: str) -> None:
    """Disable an account: its console sessions and API tokens stop working at once."""
    account = _accounts().disable(email)
    assert account.disabled_at is not None, "disable sets it"
    click.echo(f"{account.email} is disabled (since {account.disabled_at:%Y-%m-%d %H:%M} UTC)")


@staff_cli.command("list")
@with_appcontext
def list_staff() -> None:
    """Show every account: email, role, status, when and by whom it was made."""
    accounts = _accounts().all()
    if not accounts:
        click.echo("no staff accounts: add one with `flask staff add EMAIL --role admin`")
        return
    echo_table(
        ("EMAIL", "ROLE", "STATUS", "CREATED", "BY"),
        [(a.email, a.role.value, _status(a), a.created_at.strftime("%Y-%m-%d %H:%M"), a.created_by) for a in accounts],
    )


def _status(account: StaffAccount) -> str:
    if account.disabled_at:
        return f"disabled {account.disabled_at:%Y-%m-%d}"
    return "must change password" if account.must_change_password else "active"
