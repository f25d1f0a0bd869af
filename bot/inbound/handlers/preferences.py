"""user_preferences: the user stopped or resumed marketing messages inside WhatsApp."""
from __future__ import annotations

from bot.domain.consent import Action, Channel, EventDraft, Scope
from bot.inbound.events import PreferenceUpdate
from bot.inbound.handlers import Context
from bot.storage.intake import Intake
from bot.storage.ledger import utc_now

ACTIONS = {"stop": Action.OPT_OUT, "resume": Action.OPT_IN}


def on_preference(ctx: Context, intake: Intake, update: PreferenceUpdate) -> None:
    """A marketing stop or resume (bot.inbound.events keeps any other preference as unread)."""
    intake.record(
        EventDraft(
            identifier=update.identifiers[0], action=ACTIONS[update.value], scope=Scope.MARKETING, channel=Channel.WHATSAPP_PREFERENCES,
            source_ref=f"preferences:{update.identifiers[0]}:{int(update.timestamp.timestamp())}:{update.value}",
            recorded_by="webhook", consent_text=update.detail or f"{update.value} marketing messages",
            evidence={"category": update.category, "value": update.value, "detail": update.detail},
            occurred_at=min(update.timestamp, utc_now()),
        )
    )

