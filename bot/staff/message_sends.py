"""A message staff send to one person, from the staff API (POST /api/v1/messages) or the
console's inbox: its template's parameters checked against Meta's catalog, then submitted through
the consent gate to the replies queue (one message to one person does not wait behind campaigns).
One path for both, so that they refuse the same things with the same reasons."""
from __future__ import annotations

from bot.domain.identity import InvalidIdentifier, normalize_identifier
from bot.domain.policy import MessageKind
from bot.staff.request_rules import parameters_field
from bot.storage.conversations import handler_of
from bot.storage.outbox import Message, Outbox, QueueName, Submission


def handled_by_another(outbox: Outbox, message: Message, requested_by: str) -> str | None:
    """The staff member (`staff:EMAIL`) who handles the conversation a text would answer, when it
    is not whoever sends it: until they release it, no one else's text goes (SPEC §9). Templates,
    such as an order update, are not held."""
    if message.template is not None:
        return None
    try:
        person_id = outbox.ledger.state(normalize_identifier(message.to)).person_id
    except InvalidIdentifier:
        return None  # the outbox refuses the recipient itself
    staff = handler_of(outbox.engine, person_id) if person_id else None
    return staff if staff != requested_by else None


def submit_to_one(outbox: Outbox, message: Message, idempotency_key: str, requested_by: str) -> Submission:
    """Queue the message, or store it refused with the policy's reason; InvalidField for
    template parameters that do not match the catalog's. Safe to repeat with the same key."""
    if message.template:
        parameters_field(message.template, outbox.catalog)
    return outbox.submit(message, idempotency_key, requested_by, QueueName.REPLIES)


def decided_kind(outbox: Outbox, message: Message) -> MessageKind:
    """The kind the policy decides the message as: a template's category in Meta's catalog, when it has one."""
    verdict = outbox.template_verdict(message.template) if message.template else None
    return verdict if isinstance(verdict, MessageKind) else message.kind


def stored_differently(outbox: Outbox, message_id: str | None, message: Message) -> bool:
    """Whether the message stored under a repeated key is another than this one, so that the
    repeat is no repeat: compared as stored ("+1 555 016 6001" is 15550166001)."""
    stored = outbox.get(message_id) if message_id else None
    if stored is None:
        return False
    try:
        to = normalize_identifier(message.to)
    except InvalidIdentifier:
        return True
    return (stored.recipient, stored.kind, stored.content) != (to, decided_kind(outbox, message), message.content())
