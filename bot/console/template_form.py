"""The parameters a campaign's template takes, as form fields, and the send components built
from what staff typed in them: the same values for every recipient.

With Meta's catalog the fields come from the template's own placeholders; without it staff type
the body's parameters, one a line. Blank fields are left out, so that a wrong count is refused
by the catalog's own rule (bot.staff.request_rules.parameters_field), naming the template.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bot.storage.templates import CatalogTemplate, placeholders

LINKED_MEDIA = {"IMAGE", "VIDEO", "DOCUMENT"}  # header formats whose parameter is a link
UNSUPPORTED = {"LOCATION"}  # a location header takes coordinates: send such templates through the API
TEXT_LINES_FIELD = "body_lines"  # without a catalog: the body's parameters, one a line


@dataclass(frozen=True)
class ParameterField:
    part: str  # header or body
    placeholder: str  # "1", "first_name", or a media header's format (IMAGE, ...)

    @property
    def name(self) -> str:
        return f"{self.part}.{self.placeholder}"

    @property
    def media(self) -> bool:
        return self.part == "header" and self.placeholder in LINKED_MEDIA

    @property
    def label(self) -> str:
        if self.media:
            return f"Header {self.placeholder.lower()}: its https link"
        return f"{self.part.capitalize()} {{{{{self.placeholder}}}}}"


def parameter_fields(entry: CatalogTemplate) -> list[ParameterField]:
    """One field per parameter the template's header and body take, header first (none for a
    location header: the send is then refused for its missing parameter, with the reason)."""
    taken = placeholders(entry.components)
    return [ParameterField(part, name) for part in ("header", "body") for name in taken.get(part, [])
            if not (part == "header" and name in UNSUPPORTED)]


def part_texts(entry: CatalogTemplate) -> list[tuple[str, str]]:
    """(part, text) of the template's parts that have text, to show staff what they send."""
    return [
        (str(part.get("type", "")).lower(), str(part["text"]))
        for part in entry.components if isinstance(part, dict) and part.get("text")
    ]


def catalog_components(fields: list[ParameterField], form: Mapping[str, str]) -> list[dict]:
    """Meta's send components for the values typed in `fields` (blank ones left out)."""
    parts: dict[str, list[dict]] = {}
    for field in fields:
        value = form.get(field.name, "").strip()
        if value:
            parts.setdefault(field.part, []).append(_parameter(field, value))
    return [{"type": part, "parameters": parameters} for part, parameters in parts.items()]


def typed_components(form: Mapping[str, str]) -> list[dict]:
    """Body components from parameters typed one a line (no catalog to name them)."""
    lines = [line.strip() for line in form.get(TEXT_LINES_FIELD, "").splitlines() if line.strip()]
    return [{"type": "body", "parameters": [{"type": "text", "text": line} for line in lines]}] if lines else []


def _parameter(field: ParameterField, value: str) -> dict:
    if field.media:
        kind = field.placeholder.lower()
        return {"type": kind, kind: {"link": value}}
    named = {} if field.placeholder.isdigit() else {"parameter_name": field.placeholder}
    return {"type": "text", "text": value, **named}
