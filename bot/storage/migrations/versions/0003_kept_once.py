"""Unread webhook items and account notices are kept once: a redelivery adds no row.

Adds a `digest` column (SHA-256 of what the row keeps) under a unique index to `unread_webhooks`
and `account_notices`. Rows kept before get their digest, the first of identical ones only; the
copies that redeliveries added keep NULL and stay as they were.

Revision ID: 0003
Revises: 0002
"""
import hashlib
import json
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def digest(*parts: str) -> str:
    """As bot.storage.intake.digest_of computed it when this revision was written."""
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def notice_digest(field: str, details: str) -> str:
    try:
        canonical = json.dumps(json.loads(details), sort_keys=True, default=str)
    except ValueError:
        canonical = details
    return digest(field, canonical)


KEPT: dict[str, tuple[tuple[str, ...], Callable[..., str]]] = {
    "unread_webhooks": (("reason", "raw"), digest),
    "account_notices": (("field", "details"), notice_digest),
}


def upgrade() -> None:
    bind = op.get_bind()
    for name, (columns, digest_of) in KEPT.items():
        op.add_column(name, sa.Column("digest", sa.String(64)))
        table = sa.table(name, sa.column("id"), sa.column("digest"), *(sa.column(c) for c in columns))
        seen: set[str] = set()
        for row_id, *content in bind.execute(sa.select(table.c.id, *(table.c[c] for c in columns)).order_by(table.c.id)).all():
            key = digest_of(*content)
            if key not in seen:
                seen.add(key)
                bind.execute(table.update().where(table.c.id == row_id).values(digest=key))
        op.create_index(f"ux_{name}_digest", name, ["digest"], unique=True)


def downgrade() -> None:
    raise CommandError("the bot's records are never dropped by a migration; restore a backup instead")
