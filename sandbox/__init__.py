"""The WhatsApp sandbox: stands in for Meta when WHATSAPP_TOKEN is not set, so that the bot
can be tried on one machine without a Meta account.

It is a process of its own, started by `python3 dev.py start` (devstack) and never by the
bot: the bot runs exactly as in production, with GRAPH_API_URL pointed here. The sandbox
 - answers the Graph API send call (`POST /{version}/{phone_number_id}/messages`) like Meta,
   with a wamid, keeps the message and reports it sent and delivered by webhook;
 - lets a person be a WhatsApp user: a chat page at `/`, and a JSON API that
   `flask simulate` uses; what the user sends reaches the bot's real /webhook, signed with
   the app secret, as Meta would send it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from flask import Flask

from bot import PROJECT_ROOT
from bot.db import make_engine
from bot.keywords import Intent, load_keywords
from bot.ledger import Ledger
from sandbox.chats import Chats
from sandbox.webhooks import Deliveries

DISPLAY_NUMBER = "15550100000"  # the business's number as the sandbox's users see it (555-01xx is fictional)
# The quick-reply buttons Meta puts on marketing templates; keywords.yml says what they mean.
QUICK_REPLY_BUTTONS = ("Stop promotions", "Resume promotions")


@dataclass(frozen=True)
class Settings:
    bot_url: str  # where the bot serves /webhook
    app_secret: str  # signs the webhooks; the bot's WHATSAPP_APP_SECRET
    token: str  # the access token the bot must send; its WHATSAPP_TOKEN
    phone_number_id: str  # the bot's WHATSAPP_PHONE_NUMBER_ID
    database_url: str  # the bot's ledger, read to show each user's consent
    business: str
    keywords_file: str


def settings_from_env(bot_url: str, env: Mapping[str, str] = os.environ) -> Settings:
    """The sandbox reads the same variables as the bot, which devstack sets for both."""
    return Settings(
        bot_url=bot_url.rstrip("/"), app_secret=env["WHATSAPP_APP_SECRET"], token=env["WHATSAPP_TOKEN"],
        phone_number_id=env["WHATSAPP_PHONE_NUMBER_ID"], database_url=env["DATABASE_URL"],
        business=env.get("BUSINESS_NAME") or "Our business", keywords_file=env.get("KEYWORDS_FILE") or "keywords.yml",
    )


@dataclass
class Sandbox:
    """What the sandbox's requests share."""

    settings: Settings
    chats: Chats
    deliveries: Deliveries
    ledger: Ledger
    keywords: tuple[str, ...]  # the words the chat page offers as shortcuts: stop, start, help


def create_sandbox(settings: Settings) -> Flask:
    from sandbox import graph, pages

    app = Flask(__name__, template_folder=str(PROJECT_ROOT / "templates"))
    book = load_keywords(PROJECT_ROOT / settings.keywords_file)
    first = book.languages[0]
    app.extensions["sandbox"] = Sandbox(
        settings=settings,
        chats=Chats(),
        deliveries=Deliveries(f"{settings.bot_url}/webhook", settings.app_secret),
        ledger=Ledger(make_engine(settings.database_url)),
        keywords=tuple(book.words(first, intent)[0] for intent in (Intent.OPT_OUT, Intent.OPT_IN, Intent.HELP)),
    )
    app.register_blueprint(graph.bp)
    app.register_blueprint(pages.bp)
    return app
