"""What the bot does for each kind of webhook event: the conversation, statuses, preferences, account notices.

Every effect is idempotent, keyed on what Meta sent (message ids, status ids): the ledger
records an event once per source reference and the outbox sends once per idempotency key,
so a redelivered webhook, even to several processes at once, has its effects once.
"""
from __future__ import annotations

from dataclasses import dataclass

from bot.domain.keywords import KeywordBook
from bot.domain.replies import Replies
from bot.storage.campaigns import Campaigns
from bot.storage.ledger import Ledger
from bot.storage.outbox import Outbox
from bot.storage.web_opt_ins import WebOptIns


@dataclass(frozen=True)
class Context:
    ledger: Ledger
    outbox: Outbox
    keywords: KeywordBook
    replies: Replies
    campaigns: Campaigns
    web_opt_ins: WebOptIns
