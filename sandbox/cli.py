"""`python -m sandbox simulate "TEXT" --from WA_ID`: be a WhatsApp user from a script, through the sandbox."""
from __future__ import annotations

import time

import click
import requests

from bot.settings import ConfigError, load_settings


@click.command("simulate")
@click.argument("text")
@click.option("--from", "user", required=True, help="The WhatsApp user who sends it: digits with country code, or a BSUID (US.1234567890) for a username user.")
@click.option("--button", is_flag=True, help="Send TEXT as a quick-reply button tap instead of a typed message.")
@click.option("--wait", default=4.0, show_default=True, help="Seconds to wait for the bot's replies.")
def simulate(text: str, user: str, button: bool, wait: float) -> None:
    """Send TEXT to the bot as a WhatsApp user and print the bot's replies (SANDBOX_URL, or SANDBOX_PORT)."""
    try:
        settings = load_settings()
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    if not settings.sandboxed:
        raise click.ClickException("WHATSAPP_TOKEN is set, so the bot talks to Meta and no sandbox runs")
    url = settings.sandbox_url
    try:
        sent = requests.post(f"{url}/api/chats/{user}/messages", json={"button" if button else "text": text}, timeout=10)
    except requests.ConnectionError:
        raise click.ClickException(f"no sandbox at {url}: start the bot with `python3 dev.py start`") from None
    if sent.status_code != 201:
        raise click.ClickException(sent.json().get("detail", f"the sandbox answered {sent.status_code}"))
    message = sent.json()["message"]
    printed: set[str] = set()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(0.25)
        chat = requests.get(f"{url}/api/chats/{message['user']}", timeout=10).json()
        for entry in chat["messages"]:
            if entry["direction"] == "out" and entry["at"] >= message["at"] and entry["id"] not in printed:
                printed.add(entry["id"])
                click.echo(entry["text"])
    if printed:
        requests.post(f"{url}/api/chats/{message['user']}/read", timeout=10)
