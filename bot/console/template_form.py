"""A template chosen in a console form (a campaign's, or a reply's outside the 24-hour window):
the approved templates of Meta's catalog to choose from, the parameters the chosen one takes as
form fields, and the template as the staff API's body gives it, built from what staff typed.

With Meta's catalog the fields come from the template's own placeholders; without it staff type
the body's parameters, one a line. Blank fields are left out, so that a wrong count is refused
by the catalog's own rule (bot.staff.request_rules.parameters_field), naming the template.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bot.storage.templates import APPROVED, CatalogTemplate, TemplateCatalog, placeholders

LINKED_MEDIA = {"IMAGE", "VIDEO", "DOCUMENT"}  # header formats whose parameter is a link
UNSUPPORTED = {"LOCATION"}  # a location header takes coordinates: send such templates through the API
TEXT_LINES_FIELD = "body_lines"  # without a catalog: the body's parameters, one a line
NOT_IN_CATALOG = "Meta's catalog has no approved template of this name and language. Choose one from the list."


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


def approved(catalog: TemplateCatalog) -> list[CatalogTemplate]:
    """The templates Meta lets the account send, to choose from."""
    return [entry for entry in catalog.all() if entry.status == APPROVED]


def approved_entry(catalog: TemplateCatalog | None, chosen: str) -> CatalogTemplate | None:
    """The approved catalog template a form's choice names ("name/language"); None for any other."""
    name, _, language = chosen.partition("/")
    entry = catalog.get(name, language) if catalog and name and language else None
    return entry if entry is not None and entry.status == APPROVED else None


def template_body(entry: CatalogTemplate | None, form: Mapping[str, str]) -> dict:
    """The template as the staff API's body names it (for request_rules to read): the catalog
    entry with the parameters typed for it, or, without a catalog, the template typed whole."""
    if entry is not None:
        components = catalog_components(parameter_fields(entry), form)
        return {"name": entry.name, "language": entry.language, "category": entry.category.lower(), "components": components}
    return {
        "name": form.get("name", "").strip(), "language": form.get("language", "").strip(),
        "category": form.get("category", ""), "components": typed_components(form),
    }


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
