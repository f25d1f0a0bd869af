"""The console's audit page (SPEC §8): download the ledger export with filters (the staff API's
own download), run the hash chain check that `flask consent verify` runs, and see the newest
signed checkpoint. Any role may do all three: each only reads. The check reads the whole ledger,
so it runs on a POST (a link followed by a crawler or a prefetch does not start it)."""
from __future__ import annotations

import time
from dataclasses import dataclass

from flask import Blueprint, request

from bot.console.access import requires
from bot.console.rendering import render
from bot.domain.staff import Role
from bot.services import Services, current_services
from bot.staff.audit import FORMATS
from bot.staff.audit_download import export_response
from bot.staff.request_rules import InvalidField
from bot.storage.integrity import (
    Checkpoint,
    CheckpointError,
    checkpoint_directory,
    kept_at_url,
    load_checkpoints,
    newest_checkpoint,
    read_checkpoint,
    signature_problem,
)

bp = Blueprint("audit", __name__, url_prefix="/audit")


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    checked: int  # events found good before the first problem, or all of them
    problem: str | None
    seconds: float
    checkpoints: int  # signed checkpoints the ledger was held against


@dataclass(frozen=True)
class NewestCheckpoint:
    checkpoint: Checkpoint | None
    name: str | None = None  # its file
    problem: str | None = None  # why it cannot be trusted, or why there is none to show


@bp.get("")
@requires(Role.VIEWER)
def audit():
    return _page()


@bp.get("/export")
@requires(Role.VIEWER)
def export():
    try:
        return export_response(current_services().ledger, request.args, naive_is_utc=True)
    except InvalidField as refused:
        return _page(422, error=f"The export was not made: {refused}.")


@bp.post("/check")
@requires(Role.VIEWER)
def check():
    return _page(check=run_chain_check(current_services()))


def run_chain_check(services: Services) -> ChainCheck:
    """The hash chain walked with the key and held against the signed checkpoints in
    LEDGER_CHECKPOINTS (when a directory), as `flask consent verify` does."""
    started = time.monotonic()
    directory = checkpoint_directory(services.settings.ledger_checkpoints)
    try:
        signed = load_checkpoints(directory, services.ledger.key) if directory else []
    except CheckpointError as error:
        return ChainCheck(False, 0, str(error), time.monotonic() - started, 0)
    result = services.ledger.verify(signed)
    return ChainCheck(result.ok, result.checked, result.problem, time.monotonic() - started, result.checkpoints)


def newest_signed(services: Services) -> NewestCheckpoint:
    """The newest checkpoint in LEDGER_CHECKPOINTS, and whether this LEDGER_SIGNING_KEY signed it as it is."""
    where = services.settings.ledger_checkpoints
    if kept_at_url(where):
        return NewestCheckpoint(None, problem="Checkpoints are written to a URL (LEDGER_CHECKPOINTS), which this console cannot read back.")
    directory = checkpoint_directory(where)
    path = newest_checkpoint(directory) if directory else None
    if path is None:
        return NewestCheckpoint(None, problem="No checkpoint has been signed yet: workers sign one every LEDGER_CHECKPOINT_SECONDS, `flask consent checkpoint` any time.")
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as error:
        return NewestCheckpoint(None, path.name, str(error))
    return NewestCheckpoint(checkpoint, path.name, signature_problem(checkpoint, services.ledger.key))


def _page(status: int = 200, **context):
    return render("audit", status, formats=FORMATS, newest=newest_signed(current_services()), form=request.args, **context)
