"""Meta's side of the webhook: notification bodies as Meta builds them, signed and POSTed to
the bot's real /webhook, in order, retried while the bot does not answer 200 (as Meta does).
"""
from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import threading
import time

import requests

from bot.domain.identity import IdentifierKind, kind_of

log = logging.getLogger(__name__)

WABA_ID = "100000000000000"  # the sandbox's WhatsApp Business Account id
RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15)  # seconds; Meta retries for days, the sandbox for half a minute


def notification(phone_number_id: str, display_number: str, value: dict) -> dict:
    """A `messages` notification carrying `value` (its messages or statuses)."""
    metadata = {"display_phone_number": display_number, "phone_number_id": phone_number_id}
    change = {"field": "messages", "value": {"messaging_product": "whatsapp", "metadata": metadata, **value}}
    return {"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": [change]}]}


def inbound(user: str, message_id: str, content: dict) -> dict:
    """The value of a message a user sent; `content` holds `type` and its part (text, button).
    A user given by BSUID is a username user whose phone Meta does not share: no `from`, no `wa_id`."""
    message = {**_sender(user, "from", "from_user_id"), "id": message_id, "timestamp": str(int(time.time())), **content}
    return {"contacts": [{"profile": _profile(user), **_sender(user, "wa_id", "user_id")}], "messages": [message]}


def status(user: str, message_id: str, state: str) -> dict:
    """The value of a delivery status (sent, delivered, read) for a message the business sent."""
    item = {"id": message_id, "status": state, "timestamp": str(int(time.time())), **_sender(user, "recipient_id", "recipient_user_id")}
    return {"statuses": [item]}


def _sender(user: str, phone_key: str, user_id_key: str) -> dict:
    return {phone_key if kind_of(user) is IdentifierKind.PHONE else user_id_key: user}


def _profile(user: str) -> dict:
    if kind_of(user) is IdentifierKind.PHONE:
        return {"name": "Sandbox user"}
    return {"name": "Sandbox user", "username": "sandbox.user"}


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Deliveries:
    """One thread POSTs every notification when it is due, oldest first, retrying failures."""

    def __init__(self, webhook_url: str, app_secret: str):
        self.webhook_url = webhook_url
        self.app_secret = app_secret
        self._due: list[tuple[float, int, bytes, int]] = []  # (when, order, body, attempt)
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopped = False
        self._session = requests.Session()
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def send(self, body: dict, delay: float = 0.0) -> None:
        raw = json.dumps(body, ensure_ascii=False).encode()
        self._push(time.monotonic() + delay, raw, 0)

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=5)

    def _push(self, when: float, raw: bytes, attempt: int) -> None:
        with self._wake:
            heapq.heappush(self._due, (when, next(self._order), raw, attempt))
            self._wake.notify()

    def _next(self) -> tuple[bytes, int] | None:
        with self._wake:
            while not self._stopped:
                wait = self._due[0][0] - time.monotonic() if self._due else None
                if wait is not None and wait <= 0:
                    _, _, raw, attempt = heapq.heappop(self._due)
                    return raw, attempt
                self._wake.wait(wait)
            return None

    def _run(self) -> None:
        while (item := self._next()) is not None:
            raw, attempt = item
            if self._post(raw):
                continue
            if attempt < len(RETRY_DELAYS):
                self._push(time.monotonic() + RETRY_DELAYS[attempt], raw, attempt + 1)
            else:
                log.error("gave up delivering a webhook after %d attempts", attempt + 1)

    def _post(self, raw: bytes) -> bool:
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature(self.app_secret, raw)}
        try:
            answer = self._session.post(self.webhook_url, data=raw, headers=headers, timeout=10)
        except requests.RequestException as error:
            log.warning("webhook not delivered (%s); will retry", type(error).__name__)
            return False
        if answer.status_code != 200:
            log.warning("webhook answered %d; will retry", answer.status_code)
        return answer.status_code == 200
