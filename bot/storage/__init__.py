"""The database: schema and migrations, the consent ledger, the outbox, campaigns, webhook intake."""
