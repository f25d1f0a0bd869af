"""Account health notices (R11): violations, quality flags, paused templates.

Each is kept for staff and logged; campaigns it puts at risk are paused (bot.storage.campaigns).
"""
from __future__ import annotations

import json
import logging

from bot.inbound.events import AccountNotice
from bot.inbound.handlers import Context
from bot.storage.intake import Intake
from bot.storage.ledger import utc_now
from bot.storage.schema import account_notices

log = logging.getLogger(__name__)


def on_account_notice(ctx: Context, intake: Intake, notice: AccountNotice) -> None:
    log.warning("account notice for staff: %s %s", notice.field, notice.event)
    intake.keep(
        account_notices, received_at=utc_now(), field=notice.field, event=notice.event[:64],
        details=json.dumps(notice.details, default=str),  # ASCII: a lone surrogate stays an escape
    )
    ctx.campaigns.on_account_notice(notice.field, notice.event, notice.details, intake.conn)
