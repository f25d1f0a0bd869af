"""Alembic's entry point: runs the revisions on the connection `bot.storage.migrate.upgrade` holds
(one transaction, under its lock). There is no alembic.ini: use `flask db upgrade`."""
from alembic import context

from bot.storage.schema import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
