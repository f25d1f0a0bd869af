"""For people outside WhatsApp: the staff API, its request rules, the hosted consent pages, the CLI."""
