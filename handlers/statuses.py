"""Delivery statuses: message states move forward only; 131050 is a marketing opt-out."""
from __future__ import annotations

import logging

from bot.consent import delivery_marketing_opt_out
from bot.intake import Intake
from bot.ledger import utc_now
from bot.webhook_events import StatusUpdate
from handlers import Context

log = logging.getLogger(__name__)

MARKETING_STOPPED = 131050


def on_status(ctx: Context, intake: Intake, status: StatusUpdate) -> None:
    if not intake.apply_status(status.meta_message_id, status.status.value, status.error_codes[:1] or None):
        log.debug("status %s for %s changed nothing (unknown, late or out of order)", status.status.value, status.meta_message_id)
    if MARKETING_STOPPED in status.error_codes and status.recipient:
        evidence = {"meta_message_id": status.meta_message_id, "error_code": MARKETING_STOPPED}
        ref = f"status-{MARKETING_STOPPED}:{status.meta_message_id}"
        intake.record(
            delivery_marketing_opt_out(status.recipient, ref, "webhook", evidence, min(status.timestamp, utc_now()))
        )
