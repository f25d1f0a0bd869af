"""Handlers for BOT_HANDLERS in tests: one that raises, as a business's bug would."""
from bot.plugins import Handlers

handlers = Handlers()


@handlers.on_message(types=("text",), pattern=r"price")
def quote_price(message, consent, reply):
    raise ValueError("no price list loaded")


@handlers.on_message(types=("image",))
def thank_for_photo(message, consent, reply):
    reply("Thanks for the photo!")
