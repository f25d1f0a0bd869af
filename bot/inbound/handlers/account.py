"""Account health notices (R11): violations, quality flags, paused templates.

Each is kept for staff and logged, once; campaigns it puts at risk are paused (bot.storage.campaigns).
"""
from __future__ import annotations

import json
import logging

from bot.inbound.events import AccountNotice
from bot.inbound.handlers import Context
from bot.storage.intake import Intake, digest_of
from bot.storage.schema import account_notices

log = logging.getLogger(__name__)


def on_account_notice(ctx: Context, intake: Intake, notice: AccountNotice) -> None:
    """Keep the notice and act on it, once: a redelivered notice changes nothing."""
    details = json.dumps(notice.details, default=str, sort_keys=True)  # ASCII: a lone surrogate stays an escape
    kept = intake.keep_once(
        account_notices, received_at=intake.now, field=notice.field, event=notice.event[:64],
        details=details, digest=digest_of(notice.field, details),
    )
    if kept:
        log.warning("account notice for staff: %s %s", notice.field, notice.event)
        ctx.campaigns.on_account_notice(notice.field, notice.event, notice.details, intake.conn)
