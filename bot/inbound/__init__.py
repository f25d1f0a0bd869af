"""From Meta: the webhook, its events parsed into types, and the handlers that decide what each means."""
