"""A new campaign between its dry run and staff's "Send": the uploaded list and the chosen
template, kept in Redis for a short while under a random id bound to the staff member who
uploaded it. The send reads it from here, never from the browser, so that what is sent is what
the dry run counted."""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

import redis

from bot.domain.policy import MessageKind
from bot.storage.outbox import Template

TTL = 30 * 60  # seconds a dry run can be sent after the upload
_ID = re.compile(r"[A-Za-z0-9_-]{22}")


@dataclass(frozen=True)
class Draft:
    staff: str  # the email of who uploaded it: nobody else can see or send it
    file_name: str
    template: Template
    kind: MessageKind
    entries: list[str]  # the list's entries as read, blank rows included


def keep(connection: redis.Redis, draft: Draft) -> str:
    """Store the draft for TTL seconds; its id."""
    draft_id = secrets.token_urlsafe(16)
    body = {
        "staff": draft.staff, "file_name": draft.file_name, "kind": draft.kind.value, "entries": draft.entries,
        "template": {"name": draft.template.name, "language": draft.template.language, "components": draft.template.components},
    }
    connection.set(_key(draft_id), json.dumps(body), ex=TTL)
    return draft_id


def load(connection: redis.Redis, draft_id: str, staff: str) -> Draft | None:
    """The draft, if it is still kept and was uploaded by `staff`."""
    raw = connection.get(_key(draft_id)) if _ID.fullmatch(draft_id) else None
    if raw is None:
        return None
    body = json.loads(raw)
    if body["staff"] != staff:
        return None
    return Draft(body["staff"], body["file_name"], Template(**body["template"]), MessageKind(body["kind"]), body["entries"])


def _key(draft_id: str) -> str:
    return f"console:campaign-draft:{draft_id}"
