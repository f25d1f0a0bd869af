"""GET /console/templates: Meta's template catalog as the bot decides sends on it (SPEC §7), each
template's text with its {{n}} placeholders marked, and whether the catalog is current."""
from __future__ import annotations

from typing import NamedTuple

from flask import Blueprint

from bot.console.access import requires
from bot.console.rendering import render
from bot.domain.staff import Role
from bot.services import current_services, last_sync_failure
from bot.storage.templates import APPROVED, PLACEHOLDER, CatalogTemplate

bp = Blueprint("templates", __name__, url_prefix="/templates")

WAITING = {"PENDING", "IN_APPEAL", "PENDING_DELETION"}  # not sendable yet, but nothing is wrong


class Piece(NamedTuple):
    text: str
    placeholder: bool  # a {{1}} or {{name}} filled in at send time


class Part(NamedTuple):
    name: str  # Header, Body, Footer, Buttons
    pieces: list[Piece]


@bp.get("")
@requires(Role.VIEWER)
def catalog():
    services = current_services()
    templates = services.templates.all()
    return render(
        "templates", templates=[(template, parts(template), standing(template.status)) for template in templates],
        account_set=bool(services.settings.whatsapp_business_account_id), synced_at=services.templates.freshness()[1],
        failure=last_sync_failure(services),
    )


def standing(status: str) -> str:
    """How a status is marked: ok (it may be sent), waiting (Meta has not decided yet) or bad."""
    if status == APPROVED:
        return "ok"
    return "waiting" if status in WAITING else "bad"


def parts(template: CatalogTemplate) -> list[Part]:
    """The template's header, body, footer and buttons as text, as Meta lists them."""
    found = []
    for component in template.components:
        if not isinstance(component, dict):
            continue
        kind = str(component.get("type", "")).capitalize()
        if kind == "Buttons":
            labels = [str(button.get("text", "")) for button in component.get("buttons", []) if isinstance(button, dict)]
            found.append(Part(kind, [Piece(" · ".join(labels), False)]))
        elif isinstance(component.get("text"), str):
            found.append(Part(kind, _pieces(component["text"])))
        elif component.get("format"):
            found.append(Part(kind, [Piece(f"[{str(component['format']).lower()}]", True)]))
    return found


def _pieces(text: str) -> list[Piece]:
    """The text with each placeholder a piece of its own."""
    pieces, start = [], 0
    for found in PLACEHOLDER.finditer(text):
        pieces += [Piece(text[start:found.start()], False), Piece(found.group(), True)]
        start = found.end()
    return [piece for piece in (*pieces, Piece(text[start:], False)) if piece.text]
