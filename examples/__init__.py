"""Examples of the business's own handlers (BOT_HANDLERS, SPEC §9)."""
