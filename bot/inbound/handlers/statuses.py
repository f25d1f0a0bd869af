"""Delivery statuses: message states move forward only; 131050 is a marketing opt-out; what Meta bills is noted."""
from __future__ import annotations

from bot.domain.consent import delivery_marketing_opt_out
from bot.inbound.events import MARKETING_STOPPED, StatusUpdate
from bot.inbound.handlers import Context
from bot.storage.intake import Intake
from bot.storage.ledger import utc_now


def on_status(ctx: Context, intake: Intake, status: StatusUpdate) -> None:
    pricing = status.pricing
    billing = (pricing.category, pricing.type, pricing.billable) if pricing else None
    intake.apply_status(status.meta_message_id, status.status.value, status.error_codes[0] if status.error_codes else None, billing)
    if MARKETING_STOPPED in status.error_codes and status.recipients:
        evidence = {"meta_message_id": status.meta_message_id, "error_code": MARKETING_STOPPED}
        ref = f"status-{MARKETING_STOPPED}:{status.meta_message_id}"
        intake.record(
            delivery_marketing_opt_out(status.recipients[0], ref, "webhook", evidence, min(status.timestamp, utc_now()))
        )
