"""Account health notices (R11): violations, quality flags, paused templates.

Each is kept for staff and logged; campaigns it puts at risk are paused (bot.campaigns).
"""
from __future__ import annotations

import json
import logging

from bot.db import account_notices, one_statement
from bot.ledger import utc_now
from bot.webhook_events import AccountNotice
from handlers import Context

log = logging.getLogger(__name__)


def on_account_notice(ctx: Context, notice: AccountNotice) -> None:
    log.warning("account notice for staff: %s %s", notice.field, notice.event)
    with one_statement(ctx.ledger.engine) as conn:
        conn.execute(
            account_notices.insert().values(
                received_at=utc_now(), field=notice.field, event=notice.event[:64],
                details=json.dumps(notice.details, ensure_ascii=False, default=str),
            )
        )
    ctx.campaigns.on_account_notice(notice.field, notice.event, notice.details)
