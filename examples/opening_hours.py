"""An example of the business's own handlers: answers questions about opening hours.

Run the bot with `BOT_HANDLERS=examples.opening_hours` (the local run loads it when
BOT_HANDLERS is not set). Consent keywords never reach it, and its replies pass the same
consent gate as every other message: to someone who sent STOP, nothing goes.
"""
from __future__ import annotations

import logging

from bot.plugins import Consent, Handlers, IncomingMessage, Reply

log = logging.getLogger(__name__)

handlers = Handlers()

HOURS = "We are open Monday to Saturday, 9:00 to 18:00, and closed on Sundays and public holidays."


@handlers.on_message(pattern=r"\b(open|opening|close[sd]?|closing|hours|sunday|horario|abierto)\b")
def opening_hours(message: IncomingMessage, consent: Consent, reply: Reply) -> None:
    answer = reply(HOURS)
    if not answer.queued:
        log.info("opening hours not sent to %s: %s", message.person.wa_id or message.person.user_id, answer.reason)
