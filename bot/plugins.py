"""The business's own Python handlers (SPEC §9): `BOT_HANDLERS=package.module` names a module
with a `handlers = Handlers()` whose functions answer inbound messages.

    from bot.plugins import Handlers

    handlers = Handlers()

    @handlers.on_message(pattern=r"\\b(open|hours)\\b")
    def opening_hours(message, consent, reply):
        reply("We are open 9:00 to 18:00, Monday to Saturday.")

A handler gets the message, the person's consent state when it runs, and `reply(text)`, which
goes through the outbox like every other message: the consent policy decides, and `reply`
returns what it decided. The workers run handlers after the webhook is answered, one message
at a time per person, in order. Consent keywords (STOP, START, HELP...) never reach a handler,
nor does a conversation a staff member has taken over in the console. A handler that raises is
not run again for that message; `flask forward status` shows why it failed.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from bot.settings import ConfigError


@dataclass(frozen=True)
class Person:
    wa_id: str | None  # their phone number, when Meta shows it
    user_id: str | None  # their business-scoped user id (BSUID), when Meta shows it


@dataclass(frozen=True)
class Consent:
    """The person's consent when the handler runs."""

    state: str  # none, implicit, opted_in, opted_out
    marketing: str
    window_open_until: datetime | None  # free-form replies reach them until then


@dataclass(frozen=True)
class IncomingMessage:
    """An inbound message, as forwarded (the `message` of a forwarded event)."""

    id: str  # Meta's message id
    type: str  # text, button, interactive, image, location, reaction...
    person: Person
    sent_at: datetime
    text: str | None = None  # the text, a caption, or a button's title
    details: dict[str, Any] = field(default_factory=dict)  # media, location, reaction, button, quoted_id...


@dataclass(frozen=True)
class Answer:
    """What became of a reply: queued, or refused with the policy's reason."""

    queued: bool
    reason: str | None = None


class Reply(Protocol):
    def __call__(self, text: str) -> Answer: ...


Handler = Callable[[IncomingMessage, Consent, Reply], None]


@dataclass(frozen=True)
class _Route:
    handler: Handler
    types: frozenset[str] | None
    pattern: re.Pattern[str] | None

    def matches(self, message: IncomingMessage) -> bool:
        if self.types is not None and message.type not in self.types:
            return False
        return self.pattern is None or (message.text is not None and self.pattern.search(message.text) is not None)


class Handlers:
    """The handlers of a business, in the order registered: a message goes to the first that matches."""

    def __init__(self) -> None:
        self._routes: list[_Route] = []

    def on_message(self, pattern: str | None = None, types: tuple[str, ...] | None = None) -> Callable[[Handler], Handler]:
        """Register a handler for messages of these `types` (any, by default) whose text matches
        `pattern` (a regular expression searched case-insensitively; any text, by default)."""
        compiled = re.compile(pattern, re.IGNORECASE) if pattern is not None else None

        def register(handler: Handler) -> Handler:
            self._routes.append(_Route(handler, frozenset(types) if types else None, compiled))
            return handler

        return register

    def handler_for(self, message: IncomingMessage) -> Handler | None:
        return next((route.handler for route in self._routes if route.matches(message)), None)


class HandlersNotFound(ConfigError):
    """BOT_HANDLERS names no module with a `handlers = Handlers()`."""


def load_handlers(module_name: str) -> Handlers:
    """The `handlers` of the module BOT_HANDLERS names."""
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # anything its import raises: the business's code, not ours
        raise HandlersNotFound(f"BOT_HANDLERS={module_name}: the module cannot be imported ({type(error).__name__}: {error})") from None
    handlers = getattr(module, "handlers", None)
    if not isinstance(handlers, Handlers):
        raise HandlersNotFound(f"BOT_HANDLERS={module_name}: the module has no `handlers = bot.plugins.Handlers()`")
    return handlers
