"""Inbound messages: implicit consent, STOP / START / HELP, the welcome, reminders (R6-R10)."""
from __future__ import annotations

import logging

from bot.domain.consent import Action, Channel, ConsentState, EventDraft, Marketing, Scope, State
from bot.domain.identity import mask
from bot.domain.keywords import Intent, KeywordMatch
from bot.domain.policy import MessageKind
from bot.domain.replies import TELLS_HOW_TO_STOP, Reply, start_confirmation
from bot.inbound.events import InboundMessage, MessageType
from bot.inbound.handlers import Context
from bot.storage.intake import Intake
from bot.storage.ledger import utc_now
from bot.storage.outbox import Message, QueueName
from bot.storage.web_opt_ins import code_in

log = logging.getLogger(__name__)

RECORDED_BY = "webhook"
WEB_OPT_IN = "web_opt_in"  # the message confirmed a request from the opt-in page
OPT_IN_ANSWER = "opt_in_answer"  # ... answered the bot's opt-in question yes


def on_message(ctx: Context, intake: Intake, message: InboundMessage) -> None:
    """Record what the message means for consent, answer it (the sender's contact is locked),
    then keep it for the console and forward it where it is not a consent keyword (SPEC §9)."""
    intake.keep_message(message, _consent_meaning(ctx, intake, message))


def _consent_meaning(ctx: Context, intake: Intake, message: InboundMessage) -> str | None:
    """Act on the message; what it meant for consent (an Intent's value, "web_opt_in",
    "opt_in_answer"), or None for conversation."""
    if message.type is MessageType.REVOKE:
        return None  # deleting a message is not writing one: no session, nothing to answer
    intake.inbound(message.sender, message.message_id, message.timestamp, RECORDED_BY)  # R6: a new session is implicit consent
    if _confirms_web_opt_in(ctx, intake, message):
        return WEB_OPT_IN
    match = _match(ctx, message)
    if match is not None and match.intent is Intent.POSSIBLE_OPT_OUT and intake.state(message.sender).state is State.OPTED_OUT:
        match = None  # "stop sending me ads" after STOP: nothing left to stop; an ordinary message
    if match is None:
        if _answers_opt_in_question(ctx, intake, message):
            return OPT_IN_ANSWER
        if message.type is not MessageType.REACTION:  # an emoji on a message is no conversation to welcome
            _ordinary(ctx, intake, message, intake.state(message.sender))
        return None
    said = message.text or message.button_title or message.button_payload or ""
    channel = Channel.WHATSAPP_KEYWORD if message.type in (MessageType.TEXT, MessageType.EDIT) else Channel.WHATSAPP_BUTTON
    evidence = {"message_id": message.message_id, "keyword": match.keyword, "language": match.language}
    if match.intent is Intent.OPT_OUT:
        _record(intake, message, Action.OPT_OUT, match.scope, channel, said, evidence)
        if match.scope is Scope.ALL:
            _reply(ctx, intake, message, Reply.STOP_CONFIRMATION, MessageKind.STOP_CONFIRMATION, match.language)  # R7, R10
        elif intake.state(message.sender).state is State.OPTED_OUT:  # "Stop promotions" after STOP: nothing is being sent
            _reply(ctx, intake, message, Reply.UNSUBSCRIBED_REMINDER, MessageKind.REPLY, match.language)
        else:  # "Stop promotions": say what stopped, what goes on, and how to stop everything
            _reply(ctx, intake, message, Reply.MARKETING_STOP_CONFIRMATION, MessageKind.REPLY, match.language)
    elif match.intent is Intent.OPT_IN:
        _record(intake, message, Action.OPT_IN, match.scope, channel, said, evidence)  # R8
        if match.scope is Scope.ALL:
            confirmation = start_confirmation(intake.state(message.sender))
            _reply(ctx, intake, message, confirmation, MessageKind.START_CONFIRMATION, match.language)
        else:  # "Resume promotions"
            _reply(ctx, intake, message, *_marketing_resumed(intake.state(message.sender)), match.language)
    elif match.intent is Intent.HELP:
        _reply(ctx, intake, message, Reply.HELP, MessageKind.HELP_ANSWER, match.language)
    else:  # a possible opt-out: staff review it; the user is told how to stop
        _record(intake, message, Action.POSSIBLE_OPT_OUT, Scope.ALL, channel, said, evidence)
        _reply(ctx, intake, message, Reply.POSSIBLE_OPT_OUT, MessageKind.REPLY, match.language)
    return match.intent.value


def _confirms_web_opt_in(ctx: Context, intake: Intake, message: InboundMessage) -> bool:
    """A message holding the code of a request from the opt-in page, sent from the number that
    request names, confirms it (R1: double opt-in): the opt-in is recorded with the page's
    evidence and this message's. The code from any other number confirms nothing."""
    code = code_in(message.text) if message.type in (MessageType.TEXT, MessageType.EDIT) and message.text else None
    request = ctx.web_opt_ins.find(code) if code else None
    if request is None:
        return False
    if request.wa_id not in intake.state(message.sender).identifiers:
        log.warning("opt-in page code from %s, not from the number it was requested for", mask(message.sender))
        return False
    intake.record(
        EventDraft(
            identifier=request.wa_id, action=Action.OPT_IN, channel=Channel.WEB, source_ref=f"web_opt_in:{code}",
            recorded_by=RECORDED_BY, consent_text=request.evidence["consent_text_shown"],
            evidence={**request.evidence, "confirmed_by": {"whatsapp_message_id": message.message_id, "code": code}},
            occurred_at=min(message.timestamp, utc_now()),
        )
    )
    _reply(ctx, intake, message, Reply.OPT_IN_CONFIRMATION, MessageKind.START_CONFIRMATION, ctx.keywords.languages[0])
    return True


def _answers_opt_in_question(ctx: Context, intake: Intake, message: InboundMessage) -> bool:
    """A yes to the bot's own opt-in question is an opt-in to what it asked, whose text is the
    consent text (R8). Any other yes answers something else: an ordinary message. So is a yes
    to a question asked before the person opted out of anything since: they said no meanwhile."""
    if message.type not in (MessageType.TEXT, MessageType.EDIT) or not message.text:
        return False
    yes = ctx.keywords.match_yes(message.text)
    if yes is None:
        return False
    question = intake.asked_opt_in(message.sender, message.quoted_id, message.timestamp)
    if question is None:
        return False
    opt_out = intake.state(message.sender).opt_out_event
    if opt_out is not None and max(opt_out.occurred_at, opt_out.recorded_at) >= question.sent_at:
        return False
    intake.record(
        EventDraft(
            identifier=message.sender, action=Action.OPT_IN, channel=Channel.WHATSAPP_ANSWER,
            source_ref=f"opt_in:{message.message_id}", recorded_by=RECORDED_BY, consent_text=question.text,
            evidence={
                "message_id": message.message_id, "answer": message.text[:100], "language": question.language,
                "question_message_id": question.message_id, "question_meta_message_id": question.meta_message_id,
            },
            occurred_at=min(message.timestamp, utc_now()),
        )
    )
    _reply(ctx, intake, message, Reply.OPT_IN_CONFIRMATION, MessageKind.START_CONFIRMATION, question.language)
    return True


def _match(ctx: Context, message: InboundMessage) -> KeywordMatch | None:
    if message.type in (MessageType.TEXT, MessageType.EDIT) and message.text:
        return ctx.keywords.match_text(message.text)
    if message.type in (MessageType.BUTTON, MessageType.INTERACTIVE):
        return ctx.keywords.match_button(message.button_payload, message.button_title)
    return None


def _marketing_resumed(state: ConsentState) -> tuple[Reply, MessageKind]:
    """The answer to a "Resume promotions" tap: it brings offers back only to a user opted in to
    messages; one opted out of everything is told how to resume, anyone else how it works."""
    if state.marketing is Marketing.ALLOWED:
        return Reply.MARKETING_RESUME_CONFIRMATION, MessageKind.START_CONFIRMATION  # not sent if they stop meanwhile
    if state.state is State.OPTED_OUT:
        return Reply.UNSUBSCRIBED_REMINDER, MessageKind.REPLY
    return Reply.HELP, MessageKind.HELP_ANSWER


def _ordinary(ctx: Context, intake: Intake, message: InboundMessage, state: ConsentState) -> None:
    """No keyword: the welcome on first contact, or a reminder to an opted-out user once per session.

    Both are said once, so neither is tried while the window is closed (a message Meta delivers
    more than 24 hours late): refused, it would use up its once, and the user's next message,
    inside the window, would get nothing."""
    language = ctx.keywords.languages[0]
    if state.window_open_until(intake.now) is None:
        return
    if state.state is State.OPTED_OUT:
        session = state.session_event.event_id if state.session_event else message.message_id
        _reply(ctx, intake, message, Reply.UNSUBSCRIBED_REMINDER, MessageKind.REPLY, language, f"session:{session}")
    elif state.notice_event is None:
        _reply(ctx, intake, message, Reply.WELCOME, MessageKind.FREE_FORM, language, f"person:{state.person_id}")


def _record(
    intake: Intake, message: InboundMessage, action: Action, scope: Scope, channel: Channel, said: str, evidence: dict
) -> None:
    intake.record(
        EventDraft(
            identifier=message.sender, action=action, scope=scope, channel=channel,
            source_ref=f"{action.value}:{message.message_id}", recorded_by=RECORDED_BY,
            consent_text=said[:1000] or None, evidence=evidence, occurred_at=min(message.timestamp, utc_now()),
        )
    )


def _reply(
    ctx: Context, intake: Intake, message: InboundMessage, reply: Reply, kind: MessageKind, language: str,
    once_per: str | None = None,
) -> None:
    """Queue a reply (the outbox asks the policy); when it tells how to stop, note that the user was told (R9)."""
    key = f"{reply.value}:{once_per or message.message_id}"
    text = ctx.replies.render(reply, language)
    submission = intake.submit(Message(message.sender, kind, text=text), key, RECORDED_BY, QueueName.REPLIES)
    if not submission.queued:
        assert submission.reason is not None, "a refused submission has its reason"
        log.info("no %s to %s: %s", reply.value, mask(message.sender), submission.reason.value)
        return
    if reply in TELLS_HOW_TO_STOP:
        intake.record(
            EventDraft(
                identifier=message.sender, action=Action.OPT_OUT_NOTICE_GIVEN, channel=Channel.WHATSAPP_SESSION,
                source_ref=f"notice:{submission.message_id}", recorded_by=RECORDED_BY,
                evidence={"reply": reply.value, "outbound_message_id": submission.message_id, "language": language},
            )
        )
