"""The database schema as the code of this revision uses it: tables, columns and indexes.

Migrations (bot/storage/migrations/) bring a database to it; this module is never used to
create tables. The append-only triggers on consent_events are made by the migrations too.
"""
from __future__ import annotations

import sqlalchemy as sa

from bot.domain.identity import MAX_IDENTIFIER
from bot.domain.staff import MAX_ACTOR, MAX_EMAIL

metadata = sa.MetaData()

GENESIS_HASH = "0" * 64

consent_events = sa.Table(
    "consent_events",
    metadata,
    # seq is gapless and assigned under the chain lock, so a deleted event leaves a hole.
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    sa.Column("identifier", sa.String(MAX_IDENTIFIER), nullable=False),  # the phone or BSUID the event came under
    sa.Column("person_id", sa.String(36), nullable=False),  # whose it is, when it was recorded
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("basis", sa.String(16)),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("consent_text", sa.Text),
    # Kept as the exact canonical JSON text that was hashed (JSONB would reorder keys).
    sa.Column("evidence", sa.Text, nullable=False),
    sa.Column("source_ref", sa.String(255), nullable=False, unique=True),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("recorded_by", sa.String(MAX_ACTOR), nullable=False),  # webhook, page, staff:EMAIL ...
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # Which definition of `hash` the event carries (bot.storage.ledger.event_hash).
    sa.Column("hash_version", sa.SmallInteger, nullable=False, server_default="1"),
    sa.Index("ix_consent_events_person_id_seq", "person_id", "seq"),
    sa.Index("ix_consent_events_occurred_at", "occurred_at"),
    # The review queue (bot.storage.review_queue): possible opt-outs only, oldest first.
    sa.Index(
        "ix_consent_events_possible_opt_outs", "occurred_at",
        sqlite_where=sa.text("action = 'possible_opt_out'"), postgresql_where=sa.text("action = 'possible_opt_out'"),
    ),
)

# One row: the newest event's seq and hash. Writers lock it to extend the chain one at a time,
# and verification compares it with the last event, so truncating the tail is detected too.
ledger_head = sa.Table(
    "ledger_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# Who each identifier belongs to now: derived from the ledger's identity events (links, moves,
# merges), kept as a table so that a person's state is one indexed read. An identifier a person
# moved away from (an old number) has no row: it names nobody.
identities = sa.Table(
    "identities",
    metadata,
    sa.Column("identifier", sa.String(MAX_IDENTIFIER), primary_key=True),
    sa.Column("person_id", sa.String(36), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # bot.domain.identity.IdentifierKind
    sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_identities_person_id", "person_id"),
)

# People found to be another (two known people Meta then showed together): the person each
# absorbed id is now. Events keep the person id they were recorded for; a person's events are
# those recorded for them and for everyone they absorbed.
merged_people = sa.Table(
    "merged_people",
    metadata,
    sa.Column("absorbed", sa.String(36), primary_key=True),
    sa.Column("person_id", sa.String(36), nullable=False),
    sa.Index("ix_merged_people_person_id", "person_id"),
)

# Conversation facts that are not consent evidence: when the person last wrote (the 24-hour window).
contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("person_id", sa.String(36), primary_key=True),
    sa.Column("last_inbound_at", sa.DateTime(timezone=True), nullable=False),
)

# What the business sends, one row per message: the outbox the queue and the workers work from.
# Rows change state (queued -> sent -> delivered -> read, or failed / blocked); the consent
# ledger stays append-only. A claim is a lease: a worker that dies mid-send lets it expire.
outbound_messages = sa.Table(
    "outbound_messages",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
    sa.Column("recipient", sa.String(MAX_IDENTIFIER), nullable=False),  # the phone or BSUID it was addressed to
    sa.Column("person_id", sa.String(36)),  # the recipient's person, when known at submission
    sa.Column("sent_to", sa.String(MAX_IDENTIFIER)),  # who Meta's answer says it went to (wa_id or user_id)
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("content", sa.Text, nullable=False),  # JSON: {"text": ...} or {"template": {...}}
    sa.Column("queue", sa.String(16), nullable=False),
    sa.Column("campaign_id", sa.String(64)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(32)),  # why it was blocked or failed, in SPEC's vocabulary
    sa.Column("error_code", sa.Integer),
    sa.Column("error_detail", sa.Text),
    sa.Column("consent_event_id", sa.String(36)),  # the ledger event that allowed it
    sa.Column("meta_message_id", sa.String(255), unique=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("not_before", sa.DateTime(timezone=True)),
    sa.Column("lease_until", sa.DateTime(timezone=True)),
    sa.Column("requested_by", sa.String(MAX_ACTOR), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    # What Meta billed it as, from its status webhooks' `pricing` (its category, type, billable).
    sa.Column("billed_category", sa.String(32)),
    sa.Column("billed_type", sa.String(32)),
    sa.Column("billable", sa.Boolean),
    sa.Index("ix_outbound_messages_state_not_before", "state", "not_before"),
    sa.Index("ix_outbound_messages_campaign_id", "campaign_id"),
    sa.Index("ix_outbound_messages_recipient_sent_at", "recipient", "sent_at"),  # the last message a person was sent
    sa.Index("ix_outbound_messages_person_id_created_at", "person_id", "created_at"),  # a person's messages, in the console
)

# Statuses that arrived before the send that produced them was recorded (Meta can be quicker
# than our own bookkeeping); the sweeper applies them once the message has its Meta id.
early_statuses = sa.Table(
    "early_statuses",
    metadata,
    sa.Column("meta_message_id", sa.String(255), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("error_code", sa.Integer),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)

# A template sent to a list. Its messages are outbound_messages rows with its id; while
# paused_at is set, none of them is claimed for sending.
campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("template_name", sa.String(512), nullable=False),
    sa.Column("template", sa.Text, nullable=False),  # JSON: name, language, components
    sa.Column("category", sa.String(16), nullable=False),
    sa.Column("recipients", sa.Integer, nullable=False),  # distinct valid numbers: one message each
    sa.Column("requested_by", sa.String(MAX_ACTOR), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("paused_at", sa.DateTime(timezone=True)),
    sa.Column("pause_reason", sa.String(255)),
    # The list's other entries: with no number, not a number, a number listed again (NULL before 0009).
    sa.Column("blank", sa.Integer),
    sa.Column("invalid", sa.Integer),
    sa.Column("duplicates", sa.Integer),
)

# account_update, phone_number_quality_update and message_template_status_update, kept for staff.
account_notices = sa.Table(
    "account_notices",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("field", sa.String(64), nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("subject", sa.String(255)),  # the template or number it is about ("" for the account); NULL before 0005
    sa.Column("occurred_at", sa.DateTime(timezone=True)),  # when Meta says it happened, when it says
    sa.Column("digest", sa.String(64)),  # kept once (see unread_webhooks); NULL only on copies kept before 0003
    sa.Index("ux_account_notices_digest", "digest", unique=True),
)

# Signed webhook items we could not read, kept as they came so that nothing is silently dropped;
# once each: `digest` (of reason and raw) makes a redelivered item the row already kept.
unread_webhooks = sa.Table(
    "unread_webhooks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reason", sa.String(255), nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
    sa.Column("digest", sa.String(64)),  # NULL only on copies kept before revision 0003
    sa.Column("handled_at", sa.DateTime(timezone=True)),  # when staff marked it handled in the console; NULL while unread
    sa.Column("handled_by", sa.String(MAX_ACTOR)),  # staff:EMAIL
    sa.Index("ux_unread_webhooks_digest", "digest", unique=True),
)

# Meta's template catalog for WHATSAPP_BUSINESS_ACCOUNT_ID (SPEC §7): what decides a template's
# category and whether it may be sent, replaced whole by each sync and changed by webhooks.
message_templates = sa.Table(
    "message_templates",
    metadata,
    sa.Column("name", sa.String(512), primary_key=True),
    sa.Column("language", sa.String(16), primary_key=True),
    sa.Column("status", sa.String(32), nullable=False),  # APPROVED, PENDING, REJECTED, PAUSED, DISABLED...
    sa.Column("category", sa.String(32), nullable=False),  # MARKETING, UTILITY, AUTHENTICATION
    sa.Column("quality", sa.String(32)),
    sa.Column("components", sa.Text, nullable=False),  # JSON, as Meta lists them
    sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
)

# Staff who sign in to the console and call the staff API (SPEC §8), by lowercased email. A
# console session carries its account's session_generation: raising it (disabled, new password,
# signed out) ends every session signed in before.
staff_accounts = sa.Table(
    "staff_accounts",
    metadata,
    sa.Column("email", sa.String(MAX_EMAIL), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),  # bot.domain.staff.Role
    sa.Column("password_hash", sa.String(255), nullable=False),  # argon2id, with its parameters and salt
    sa.Column("must_change_password", sa.Boolean, nullable=False),
    sa.Column("session_generation", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.String(MAX_ACTOR), nullable=False),
    sa.Column("disabled_at", sa.DateTime(timezone=True)),
)

# Staff API tokens: the SHA-256 of each (the token itself is shown once, when made). A token acts
# with its account's role, and stops working when the account is disabled.
staff_tokens = sa.Table(
    "staff_tokens",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("email", sa.String(MAX_EMAIL), sa.ForeignKey("staff_accounts.email"), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.String(MAX_ACTOR), nullable=False),
    sa.Index("ix_staff_tokens_email", "email"),
)

# What people write (SPEC §9), kept for the console for MESSAGE_RETENTION_DAYS: the consent
# ledger's evidence never depends on it. One row per Meta message id; an edit changes `text`,
# a revoke sets `revoked_at` (and empties the text). `content`: JSON of what a message holds
# besides its text (media metadata and Meta's media id, a location, contacts, a reaction, a
# button reply, the message it quotes).
inbound_messages = sa.Table(
    "inbound_messages",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),  # Meta's message id
    sa.Column("person_id", sa.String(36), nullable=False),  # whose it is, when it came
    sa.Column("sender", sa.String(MAX_IDENTIFIER), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),  # bot.inbound.events.MessageType
    sa.Column("text", sa.Text),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("handled_as", sa.String(32)),  # what the bot made of it: a consent keyword's intent, or NULL for conversation
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("edited_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Index("ix_inbound_messages_person_id_sent_at", "person_id", "sent_at"),
    sa.Index("ix_inbound_messages_received_at", "received_at"),
)

# Each person's conversation in the console's inbox: when they last wrote, when staff last read
# it, and the staff member who took it over (no plug-in or forwarded system answers it meanwhile).
conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("person_id", sa.String(36), primary_key=True),
    sa.Column("last_inbound_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("read_at", sa.DateTime(timezone=True)),
    sa.Column("handled_by", sa.String(MAX_ACTOR)),  # staff:EMAIL, while a person handles it
    sa.Column("handled_since", sa.DateTime(timezone=True)),
    sa.Index("ix_conversations_last_inbound_at", "last_inbound_at"),
)

# Events for the business's systems (SPEC §9): inbound messages, delivery statuses and consent
# changes, written in the transaction that recorded them, delivered by the workers in `seq` order
# per person and destination (FORWARD_URL, or the BOT_HANDLERS plug-ins), retried with back-off.
FORWARD_PENDING = sa.text("state = 'pending'")
forwarded_events = sa.Table(
    "forwarded_events",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(36), nullable=False, unique=True),  # the event's id: the receiver's idempotency key
    sa.Column("destination", sa.String(16), nullable=False),  # bot.storage.forwarding.Destination
    sa.Column("person_id", sa.String(36), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),  # message, status, consent
    sa.Column("body", sa.Text, nullable=False),  # the JSON delivered, exactly
    sa.Column("state", sa.String(16), nullable=False),  # pending, delivered, failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("lease_until", sa.DateTime(timezone=True)),
    sa.Column("last_error", sa.String(255)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Index(
        "ix_forwarded_events_pending", "destination", "seq",
        sqlite_where=FORWARD_PENDING, postgresql_where=FORWARD_PENDING,
    ),
    sa.Index("ix_forwarded_events_state_finished_at", "state", "finished_at"),
)
