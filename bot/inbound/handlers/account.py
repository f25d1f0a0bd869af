"""Account health notices (R11): violations, quality flags, paused templates.

Each is kept for staff and logged, once; campaigns it puts at risk are paused (bot.storage.campaigns).
A template's new status or quality, or a category change Meta has made (not one it announces
for later), changes the template catalog (SPEC §7), so that sends are decided on it from then on.
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

STATUS_OF_EVENT = {"REINSTATED": "APPROVED"}  # a status event whose template's status has another name
STATUS_UNCHANGED = {"FLAGGED"}  # a warning about quality: the template can still be sent


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
    _update_catalog(ctx, intake, notice)
    ctx.campaigns.on_account_notice(notice.field, notice.event, notice.details, intake.conn)


def _update_catalog(ctx: Context, intake: Intake, notice: AccountNotice) -> None:
    catalog, details = ctx.outbox.catalog, notice.details
    name, language = details.get("message_template_name"), details.get("message_template_language")
    if catalog is None or not isinstance(name, str):
        return
    language = language.replace("-", "_") if isinstance(language, str) else None
    # An impending change carries `correct_category` (and the current one as `new_category`): not made yet.
    if notice.field == "template_category_update" and "correct_category" not in details and isinstance(details.get("new_category"), str):
        catalog.update(intake.conn, name, language, notice.at, category=details["new_category"].upper())
    elif notice.field == "message_template_status_update" and notice.event not in STATUS_UNCHANGED:
        catalog.update(intake.conn, name, language, notice.at, status=STATUS_OF_EVENT.get(notice.event, notice.event)[:32])
    elif notice.field == "message_template_quality_update" and isinstance(details.get("new_quality_score"), str):
        catalog.update(intake.conn, name, language, notice.at, quality=details["new_quality_score"].upper()[:32])


def _newer_kept(intake: Intake, notice: AccountNotice) -> bool:
    newer = sa.select(account_notices.c.id).where(
        account_notices.c.field == notice.field, account_notices.c.subject == notice.subject,
        account_notices.c.occurred_at > notice.at,
    )
    return intake.conn.execute(newer.limit(1)).first() is not None
