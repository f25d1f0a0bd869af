"""Meta says a user moved to a new number or BSUID: their consent goes with them (SPEC §6).

The move itself is made when the POST's people are settled (bot.storage.intake); a system
message is not the user writing, so nothing else happens: no session, no reply.
"""
from __future__ import annotations

import logging

from bot.domain.identity import mask
from bot.inbound.events import IdentityChange
from bot.inbound.handlers import Context
from bot.storage.intake import Intake

log = logging.getLogger(__name__)


def on_identity_change(ctx: Context, intake: Intake, change: IdentityChange) -> None:
    log.info("%s: %s now %s", change.kind, ", ".join(map(mask, change.left)), ", ".join(map(mask, change.joined)))
