"""Account health notices (R11): violations, quality flags, paused templates.

Each is kept for staff and logged, once; campaigns it puts at risk are paused (bot.storage.campaigns).
"""
from __future__ import annotations

import json
import logging

import sqlalchemy as sa

from bot.inbound.events import AccountNotice
from bot.inbound.handlers import Context
from bot.storage.intake import Intake, digest_of
from bot.storage.schema import account_notices

log = logging.getLogger(__name__)


def on_account_notice(ctx: Context, intake: Intake, notice: AccountNotice) -> None:
    """Keep the notice and act on it, once: a redelivered notice changes nothing, and one older
    than a notice already kept on the same subject is kept for staff but undoes nothing (a
    FLAGGED delivered after the UNFLAGGED that followed it pauses no campaign)."""
    details = json.dumps(notice.details, default=str, sort_keys=True)  # ASCII: a lone surrogate stays an escape
    told_at = () if notice.at is None else (notice.at.isoformat(),)  # the same words on another day are another notice
    kept = intake.keep_once(
        account_notices, received_at=intake.now, field=notice.field, event=notice.event[:64], details=details,
        subject=notice.subject, occurred_at=notice.at, digest=digest_of(notice.field, details, *told_at),
    )
    if not kept:
        return
    if notice.at is not None and _newer_kept(intake, notice):
        log.warning("account notice for staff, older than one already applied: %s %s", notice.field, notice.event)
        return
    log.warning("account notice for staff: %s %s", notice.field, notice.event)
    ctx.campaigns.on_account_notice(notice.field, notice.event, notice.details, intake.conn)


def _newer_kept(intake: Intake, notice: AccountNotice) -> bool:
    newer = sa.select(account_notices.c.id).where(
        account_notices.c.field == notice.field, account_notices.c.subject == notice.subject,
        account_notices.c.occurred_at > notice.at,
    )
    return intake.conn.execute(newer.limit(1)).first() is not None
