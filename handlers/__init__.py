"""What the bot does for each kind of webhook event: keywords, welcome, statuses, preferences."""
