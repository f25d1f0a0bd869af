"""How the console answers: HTML pages from templates/console/, errors as pages too (never JSON
or a traceback), and on every response the headers that keep its pages out of caches and frames
and forbid inline scripts and styles (there are none: its CSS is a static file)."""
from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import redis
import sqlalchemy as sa
from flask import Blueprint, Response, make_response, render_template
from werkzeug.exceptions import HTTPException

from bot.console import inbound_words, wording
from bot.console.access import current_staff
from bot.services import current_services
from bot.storage.inbox import Inbox
from bot.storage.ledger import utc_now

log = logging.getLogger(__name__)

PREFIX = "/console"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
WORDING = (
    wording.event_summary, wording.shows_consent_text, wording.evidence_items, wording.actor_name, wording.refusal,
    wording.moment, wording.time_left, wording.identifier_kind, wording.state_line,
    wording.marketing_line, wording.message_state, wording.message_content,
    inbound_words.attachment_line, inbound_words.quote_line, inbound_words.snippet, inbound_words.keyword_meaning, inbound_words.deleted,
)
UNAVAILABLE = "The database or Redis is not answering. Please try again in a minute."
UNREAD_SHOWN = 99  # conversations the Inbox link counts up to: more read "99+"


class Section(NamedTuple):
    name: str
    summary: str
    endpoint: str  # its page
    blueprints: tuple[str, ...]  # the blueprints whose pages are this section's (marked current in the bar)


# The console's sections (SPEC §8, §9), in the navigation bar and on the home page.
SECTIONS = (
    Section(
        "Inbox", "Conversations, newest first: read what people wrote, reply, take one over from automated replies.",
        "console.inbox.inbox", ("console.inbox",),
    ),
    Section(
        "People", "Find a person by phone or BSUID: consent state, window, history with evidence, messages.", "console.people.search",
        ("console.people",),
    ),
    Section("Review", "Possible opt-outs to confirm or dismiss.", "console.review.queue", ("console.review",)),
    Section(
        "Campaigns", "New from a CSV and a template, dry runs, live progress, pause and resume.", "console.campaigns.campaigns",
        ("console.campaigns", "console.new_campaign"),
    ),
    Section("Templates", "Meta's template catalog: category, status, quality.", "console.templates.catalog", ("console.templates",)),
    Section("Account health", "Quality rating, Meta's notices, unread webhooks.", "console.health.health", ("console.health",)),
    Section("Audit", "The ledger export and its chain check.", "console.audit.audit", ("console.audit",)),
)


def serve_pages(bp: Blueprint) -> None:
    """Secure every response of `bp` (and the blueprints in it), answer its errors with pages,
    and give its templates the words of bot.console.wording."""
    bp.after_request(secured)
    bp.add_app_template_filter(moment)
    for helper in WORDING:
        bp.add_app_template_global(helper)
    bp.register_error_handler(HTTPException, error_page)
    bp.register_error_handler(sa.exc.SQLAlchemyError, _unavailable)
    bp.register_error_handler(redis.RedisError, _unavailable)


def in_console(path: str) -> bool:
    """Whether a request path is the console's (for errors raised before a blueprint is chosen, such as 404)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def render(page: str, status: int = 200, **context) -> Response:
    """templates/console/PAGE.html, with who is signed in, the business's name and, for the
    navigation bar, how many conversations wait to be read (not on a page about a failure)."""
    staff = current_staff()
    counts = _counts() if staff is not None and not staff.must_change_password and status < 500 else {}
    body = render_template(
        f"console/{page}.html", staff=staff, business=current_services().settings.business_name, sections=SECTIONS,
        counts=counts, **context,
    )
    return make_response(body, status)


def _counts() -> dict[str, str]:
    """What the navigation bar shows beside a section's name: the conversations with something unread
    (those written to within MESSAGE_RETENTION_DAYS, whose messages are kept)."""
    services = current_services()
    since = utc_now() - timedelta(days=services.settings.message_retention_days)
    unread = Inbox(services.engine).unread_conversations(since, UNREAD_SHOWN + 1)
    return {"Inbox": f"{UNREAD_SHOWN}+" if unread > UNREAD_SHOWN else str(unread)} if unread else {}


def moment(at: datetime | None) -> str:
    """A time as staff read it (a Jinja filter): to the minute, in UTC, which every time stored is."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if at else "never"


def secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def error_page(failure: HTTPException) -> Response:
    """An error as a page: its status, its name and what to do."""
    status = failure.code or 500
    return secured(render("error", status, title=failure.name, detail=failure.description))


def _unavailable(failure: Exception) -> Response:
    log.error("console request failed, database or Redis unavailable: %s", type(failure).__name__)
    return secured(render("error", 503, title="Unavailable", detail=UNAVAILABLE))
