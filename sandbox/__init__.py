"""The WhatsApp sandbox: stands in for Meta when WHATSAPP_TOKEN is not set, so that the bot
can be tried on one machine without a Meta account.

It is a process of its own, started by `python3 dev.py start` (devstack) and never by the
bot: the bot runs exactly as in production, with GRAPH_API_URL pointed here. The sandbox
 - answers the Graph API send call (`POST /{version}/{phone_number_id}/messages`) with the Graph
   API imitation the tests use, keeps the message and reports it sent and delivered by webhook;
 - lets a person be a WhatsApp user: a chat page at `/`, and a JSON API that
   `python -m sandbox simulate` uses; what the user sends reaches the bot's real /webhook, signed with
   the app secret, as Meta would send it.
"""
from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from bot.domain.keywords import Intent, load_keywords
from bot.services import ledger_key
from bot.settings import PROJECT_ROOT, Settings
from bot.storage.db import make_engine
from bot.storage.ledger import Ledger
from sandbox.chats import Chats
from sandbox.graph_imitation import GraphImitation
from sandbox.webhooks import Deliveries

DISPLAY_NUMBER = "15550100000"  # the business's number as the sandbox's users see it (555-01xx is fictional)
# The quick-reply buttons Meta puts on marketing templates; keywords.yml says what they mean.
QUICK_REPLY_BUTTONS = ("Stop promotions", "Resume promotions")


_EXTENSION = "whatsapp_sandbox"


@dataclass
class Sandbox:
    """What the sandbox's requests share."""

    settings: Settings  # the bot's: its token, phone number id, app secret, ledger and business name
    chats: Chats
    deliveries: Deliveries
    ledger: Ledger
    keywords: tuple[str, ...]  # the words the chat page offers as shortcuts: stop, start, help
    graph: GraphImitation  # answers the bot's send calls (sandbox.graph)


def create_sandbox(settings: Settings, bot_url: str) -> Flask:
    """The sandbox for the bot configured with `settings` (devstack points them at each other)
    and serving /webhook at `bot_url`."""
    from sandbox import graph, pages

    app = Flask(__name__, template_folder=str(PROJECT_ROOT / "templates"))
    book = load_keywords(settings.keywords_file)
    first = book.languages[0]
    imitation = GraphImitation(token=settings.whatsapp_token or "", phone_number_id=settings.whatsapp_phone_number_id or "")
    sandbox = Sandbox(
        settings=settings,
        chats=Chats(),
        deliveries=Deliveries(f"{bot_url.rstrip('/')}/webhook", settings.whatsapp_app_secret or ""),
        ledger=Ledger(make_engine(settings.database_url), key=ledger_key(settings)),
        keywords=tuple(book.words(first, intent)[0] for intent in (Intent.OPT_OUT, Intent.OPT_IN, Intent.HELP)),
        graph=imitation,
    )
    imitation.on_accept = lambda received: graph.show(sandbox, received)
    app.extensions[_EXTENSION] = sandbox
    app.register_blueprint(graph.bp)
    app.register_blueprint(pages.bp)
    return app


def sandbox_of(app: Flask) -> Sandbox:
    return app.extensions[_EXTENSION]


def current_sandbox() -> Sandbox:
    return sandbox_of(current_app)
