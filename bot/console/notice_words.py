"""Meta's account notices in words staff read: what each kind is, what its event means, the
messaging limit a tier allows, and the details as labelled lines. Unknown names are shown
tidied, never dropped: Meta adds events without notice."""
from __future__ import annotations

import json
import re

from bot.storage.intake import BILLING_DISCREPANCY
from bot.storage.notices import Notice

KINDS = {
    "account_update": "Account",
    "phone_number_quality_update": "Phone number quality",
    "message_template_status_update": "Template status",
    "template_category_update": "Template category",
    "message_template_quality_update": "Template quality",
    BILLING_DISCREPANCY: "Billed as marketing",
    "user_preferences": "Marketing sign-up",
}
QUALITY_EVENTS = {
    "FLAGGED": "Flagged: quality is low, and the messaging limit will be lowered if it does not improve",
    "UNFLAGGED": "No longer flagged: quality is back to medium or high",
    "DOWNGRADE": "Messaging limit lowered because of low quality",
    "UPGRADE": "Messaging limit raised",
    "ONBOARDING": "Onboarding: a new number, with a low messaging limit",
}
EVENTS = {
    "BILLED_AS_MARKETING": "Meta billed a message as marketing that was sent on other consent",
    "ACCOUNT_VIOLATION": "Account violation",
    "ACCOUNT_RESTRICTION": "Account restricted",
    "DISABLED_UPDATE": "Account disabled",
    "REINSTATED": "Reinstated",
}
_TIER = re.compile(r"TIER_(\d+)(K?)")


def kind(field: str) -> str:
    return KINDS.get(field, tidy(field))


def event(notice: Notice) -> str:
    """What happened, in words."""
    said = notice.event.upper()
    if notice.field == "phone_number_quality_update" and said in QUALITY_EVENTS:
        return QUALITY_EVENTS[said]
    return EVENTS.get(said, tidy(notice.event))


def messaging_limit(tier: object) -> str | None:
    """A tier (TIER_2K) as the number of customers it lets the business start conversations with in 24 hours."""
    if not isinstance(tier, str) or not tier:
        return None
    if tier.upper() == "TIER_UNLIMITED":
        return "unlimited customers a day"
    found = _TIER.fullmatch(tier.upper())
    if not found:
        return tidy(tier)
    count = int(found.group(1)) * (1000 if found.group(2) else 1)
    return f"{count:,} customers a day"


def detail_lines(details: dict, within: str = "") -> list[tuple[str, str]]:
    """Every detail as (label, value), nested ones labelled with their parents."""
    lines = []
    for key, value in details.items():
        label = f"{within} · {tidy(str(key)).lower()}" if within else tidy(str(key))
        if isinstance(value, dict):
            lines += detail_lines(value, label)
        else:
            lines.append((label, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)))
    return lines


def tidy(name: str) -> str:
    """MESSAGE_TEMPLATE_ID, message_template_id -> Message template id."""
    words = name.replace("_", " ").strip()
    return words[:1].upper() + words[1:].lower() if words else "—"
