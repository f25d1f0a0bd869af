"""Small builders shared by tests."""
from __future__ import annotations

from dataclasses import replace

from flask import Flask

from bot.domain.consent import Action, Channel, EventDraft, Scope
from bot.services import services_of

USER = "16505551234"
OTHER_USER = "447700900123"


def reconfigure(app: Flask, **changes: object) -> None:
    """Change settings of a running app, as a restart with other environment variables would."""
    services = services_of(app)
    services.settings = replace(services.settings, **changes)


def web_opt_in(wa_id: str = USER, ref: str = "form-1", scope: Scope = Scope.ALL, **extra) -> EventDraft:
    return EventDraft(
        identifier=wa_id,
        action=Action.OPT_IN,
        channel=Channel.WEB,
        scope=scope,
        source_ref=ref,
        recorded_by="staff:test",
        consent_text="Yes, send me order updates and offers from Acme Bakery on WhatsApp.",
        evidence={"form": "signup", "ip": "203.0.113.9"},
        **extra,
    )


def opt_out(wa_id: str = USER, ref: str = "stop-1", scope: Scope = Scope.ALL, channel: Channel = Channel.WHATSAPP_KEYWORD) -> EventDraft:
    return EventDraft(
        identifier=wa_id, action=Action.OPT_OUT, channel=channel, scope=scope, source_ref=ref,
        recorded_by="webhook", consent_text="STOP", evidence={"message_id": ref},
    )


def keyword_opt_in(wa_id: str = USER, ref: str = "start-1") -> EventDraft:
    return EventDraft(
        identifier=wa_id, action=Action.OPT_IN, channel=Channel.WHATSAPP_KEYWORD, source_ref=ref,
        recorded_by="webhook", consent_text="START", evidence={"message_id": ref},
    )


def notice_given(wa_id: str = USER, ref: str = "welcome-1") -> EventDraft:
    return EventDraft(
        identifier=wa_id, action=Action.OPT_OUT_NOTICE_GIVEN, channel=Channel.WHATSAPP_SESSION, source_ref=ref,
        recorded_by="webhook", evidence={"reply": "welcome", "message_id": ref},
    )
