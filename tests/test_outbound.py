"""The outbox and the send job, against the real database, the real Redis and a real local HTTP
Graph API imitation: policy at queue time and again at send time, pacing, retries, outcomes."""
from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from rq import Queue

from bot.domain.consent import Action, Channel, Marketing, Scope
from bot.domain.policy import MessageKind, Refusal
from bot.outbound.jobs import SendRuntime
from bot.outbound.queues import make_queues
from bot.outbound.sender import Outcome, Sender
from bot.outbound.worker import SWEEPER_LOCK, sweep
from bot.services import services_of
from bot.storage.ledger import utc_now
from bot.storage.outbox import Message, MessageState, Outbox, QueueName, Template
from tests.helpers import OTHER_USER, USER, opt_out, web_opt_in

UTILITY = Message(USER, MessageKind.UTILITY_TEMPLATE, template=Template("order_update", "en_US", [{"type": "body"}]))
MARKETING = Message(USER, MessageKind.MARKETING_TEMPLATE, template=Template("spring_sale", "en_US"))


@pytest.fixture
def outbox(app):
    return services_of(app).outbox


@pytest.fixture
def clock_outbox(outbox):
    """The same outbox with a clock the test can move."""
    return Outbox(outbox.engine, outbox.ledger, outbox.enqueue, lease=outbox.lease, clock=utc_now)


@pytest.fixture
def sender(app):
    return SendRuntime(services_of(app)).sender


def test_allowed_message_is_stored_with_its_consent_event_and_queued(app, outbox):
    opt_in = services_of(app).ledger.append(web_opt_in())
    submission = outbox.submit(UTILITY, "req-1", "staff:test", QueueName.BULK)
    assert submission.queued and submission.reason is None
    stored = outbox.get(submission.message_id)
    assert (stored.state, stored.consent_event_id, stored.recipient) == (MessageState.QUEUED, opt_in.event_id, USER)
    jobs = Queue("bulk", connection=services_of(app).redis).jobs
    assert [job.args for job in jobs] == [([submission.message_id],)]


def test_refusal_is_recorded_with_its_reason_and_not_queued(app, outbox):
    services_of(app).ledger.record_inbound(USER, "wamid.A", services_of(app).ledger.clock())
    submission = outbox.submit(MARKETING, "req-1", "staff:test")
    assert (submission.queued, submission.reason) == (False, Refusal.NO_CONSENT)
    assert outbox.get(submission.message_id).state is MessageState.BLOCKED
    assert Queue("replies", connection=services_of(app).redis).count == 0


def test_invalid_recipient_is_refused(outbox):
    submission = outbox.submit(Message("12ab", MessageKind.UTILITY_TEMPLATE, template=Template("x", "en")), "r", "staff")
    assert (submission.message_id, submission.reason) == (None, Refusal.INVALID_RECIPIENT)


def test_same_idempotency_key_is_one_message_sent_once(app, outbox, sender, graph):
    services_of(app).ledger.append(web_opt_in())
    first = outbox.submit(UTILITY, "req-1", "staff:test")
    again = outbox.submit(UTILITY, "req-1", "staff:test")
    assert first.message_id == again.message_id
    assert sender.send(first.message_id) is Outcome.SENT
    assert sender.send(first.message_id) is Outcome.SKIPPED
    assert graph.sent_to() == {USER: 1}


def test_send_records_meta_id_and_sends_the_template(app, outbox, sender, graph):
    services_of(app).ledger.append(web_opt_in())
    message_id = outbox.submit(UTILITY, "req-1", "staff:test").message_id
    assert sender.send(message_id) is Outcome.SENT
    stored = outbox.get(message_id)
    assert stored.state is MessageState.SENT and stored.meta_message_id.startswith("wamid.IMITATION")
    assert graph.requests[0].body["template"] == {"name": "order_update", "language": {"code": "en_US"}, "components": [{"type": "body"}]}


def test_stop_between_queuing_and_sending_wins(app, outbox, sender, graph):
    ledger = services_of(app).ledger
    ledger.append(web_opt_in())
    message_id = outbox.submit(UTILITY, "req-1", "staff:test").message_id
    ledger.append(opt_out(ref="wamid.STOP"))
    assert sender.send(message_id) is Outcome.BLOCKED
    stored = outbox.get(message_id)
    assert (stored.state, stored.reason) == (MessageState.BLOCKED, "opted_out")
    assert graph.requests == []


def test_transient_errors_go_back_to_the_queue_for_later(app, outbox, sender, graph, clock_outbox):
    services_of(app).ledger.append(web_opt_in())
    message_id = outbox.submit(UTILITY, "req-1", "staff:test").message_id
    graph.server_errors_until = float("inf")
    assert sender.send(message_id) is Outcome.RETRY
    stored = outbox.get(message_id)
    assert (stored.state, stored.attempts, stored.error_code) == (MessageState.QUEUED, 1, 2)
    assert sender.send(message_id) is Outcome.SKIPPED  # not due yet
    assert clock_outbox.due_for_recovery(timedelta(seconds=10)) == []
    clock_outbox.clock = lambda: utc_now() + timedelta(seconds=6)  # TransientError waits 5 s
    assert clock_outbox.due_for_recovery(timedelta(seconds=10)) == [(message_id, QueueName.REPLIES, False)]


def test_sweeper_queues_due_retries_expired_leases_and_lost_jobs_once(app, outbox, sender, graph):
    ledger, connection = services_of(app).ledger, services_of(app).redis
    ledger.append(web_opt_in())
    queues = make_queues(connection)
    claimed = outbox.submit(UTILITY, "req-1", "staff:test").message_id
    never_claimed = outbox.submit(UTILITY, "req-2", "staff:test").message_id
    outbox.claim(claimed)  # its worker then dies
    later = Outbox(outbox.engine, ledger, outbox.enqueue, lease=outbox.lease, clock=lambda: utc_now() + timedelta(minutes=2))
    # The replies queue still holds both jobs: only the expired lease is certainly lost.
    assert sweep(later, queues, connection, every=5) == 1
    connection.delete(SWEEPER_LOCK)
    assert sweep(later, queues, connection, every=5) == 0  # just re-queued: left alone
    queues[QueueName.REPLIES].empty()
    later.clock = lambda: utc_now() + timedelta(minutes=4)
    connection.delete(SWEEPER_LOCK)
    assert sweep(later, queues, connection, every=5) == 2  # an idle queue proves both jobs lost
    assert [sorted(job.args[0]) for job in queues[QueueName.REPLIES].jobs] == [sorted([claimed, never_claimed])]


@pytest.mark.parametrize(
    "code, reason",
    [(131026, "send_error"), (131047, "window_closed"), (132001, "send_error"), (190, "send_error")],
)
def test_permanent_errors_fail_with_their_code(app, outbox, sender, graph, code, reason):
    services_of(app).ledger.append(web_opt_in())
    graph.fail[USER] = code
    message_id = outbox.submit(UTILITY, "req-1", "staff:test").message_id
    assert sender.send(message_id) is Outcome.FAILED
    stored = outbox.get(message_id)
    assert (stored.state, stored.error_code, stored.reason) == (MessageState.FAILED, code, reason)


def test_131050_records_a_marketing_opt_out(app, outbox, sender, graph):
    ledger = services_of(app).ledger
    ledger.append(web_opt_in())
    graph.fail[USER] = 131050
    message_id = outbox.submit(MARKETING, "req-1", "staff:test").message_id
    assert sender.send(message_id) is Outcome.FAILED
    state = ledger.state(USER)
    assert state.marketing is Marketing.OPTED_OUT and state.state.value == "opted_in"
    event = ledger.history(USER)[-1]
    assert (event.action, event.scope, event.channel) == (Action.OPT_OUT, Scope.MARKETING, Channel.WHATSAPP_DELIVERY)
    assert event.evidence["message_id"] == message_id
    # The next marketing message is refused before it is queued; utility still goes.
    assert outbox.submit(MARKETING, "req-2", "staff:test").reason is Refusal.MARKETING_OPTED_OUT
    assert outbox.submit(UTILITY, "req-3", "staff:test").queued


def test_pair_rate_defers_a_burst_to_one_user(app, outbox, sender, graph):
    services_of(app).ledger.append(web_opt_in())
    ids = [outbox.submit(UTILITY, f"req-{n}", "staff:test").message_id for n in range(6)]
    outcomes = [sender.send(message_id) for message_id in ids]
    assert outcomes == [Outcome.SENT] * 5 + [Outcome.RETRY]
    assert graph.sent_to() == {USER: 5}


def test_campaign_submission_skips_and_counts_by_reason(app, outbox):
    ledger = services_of(app).ledger
    ledger.append(web_opt_in())
    ledger.append(web_opt_in(OTHER_USER, ref="form-2"))
    ledger.append(opt_out(OTHER_USER, ref="stop-2"))
    items = [(Message(to, MessageKind.MARKETING_TEMPLATE, template=Template("sale", "en")), f"c1:{to}") for to in (USER, OTHER_USER, "15550001111", "bad")]
    submissions = outbox.submit_many(items, "staff:test", QueueName.BULK, campaign_id="c1")
    assert [s.reason for s in submissions] == [None, Refusal.OPTED_OUT, Refusal.NO_CONSENT, Refusal.INVALID_RECIPIENT]


def test_a_key_repeated_within_one_submission_is_one_message(app, outbox):
    services_of(app).ledger.append(web_opt_in())
    first, again = outbox.submit_many([(UTILITY, "dup"), (UTILITY, "dup")], "staff:test")
    assert first == again and first.queued
    jobs = Queue("bulk", connection=services_of(app).redis).jobs
    assert [job.args for job in jobs] == [([first.message_id],)]


def test_stop_while_a_message_waits_for_its_send_slot_wins(app, outbox, graph):
    services = services_of(app)
    ledger = services.ledger
    ledger.append(web_opt_in())
    message_id = outbox.submit(UTILITY, "req-1", "staff:test").message_id

    def stop_arrives_while_sleeping(seconds: float) -> None:
        ledger.append(opt_out(ref="wamid.STOP-while-waiting"))

    sender = Sender(outbox, services.cloud_api, services.throughput_limiter, services.pair_limiter, services.opt_out_marks, sleep=stop_arrives_while_sleeping)
    assert sender.send(message_id) is Outcome.BLOCKED
    assert outbox.get(message_id).reason == "opted_out" and graph.requests == []


@pytest.mark.parametrize("path", ["send", "send loop"])
def test_stop_after_the_consent_check_and_before_the_call_wins(app, outbox, graph, path):
    """The check against the ledger comes a few ms before the call; a STOP recorded between
    them changes the user's opt-out mark, which the call thread reads last."""
    ledger = services_of(app).ledger
    ledger.append(web_opt_in())
    message_id = outbox.submit(UTILITY, "req-1", "staff:test").message_id
    runtime = SendRuntime(services_of(app))
    checks, check = [], runtime.sender.check

    def stop_arrives_after_the_first_check(messages):
        checked = check(messages)
        if not checks:
            ledger.append(opt_out(ref="wamid.STOP-after-check"))
        checks.append([cleared.decision.allowed for cleared in checked])
        return checked

    runtime.sender.check = stop_arrives_after_the_first_check
    if path == "send":
        assert runtime.sender.send(message_id) is Outcome.BLOCKED
    else:
        runtime.dispatch([message_id])
        runtime.shutdown()
    assert checks == [[True], [False]]  # allowed, then checked again and refused
    assert (outbox.get(message_id).state, outbox.get(message_id).reason) == (MessageState.BLOCKED, "opted_out")
    assert graph.requests == []


def test_claim_many_leases_only_due_queued_messages_in_one_go(app, outbox, sender, graph):
    services_of(app).ledger.append(web_opt_in())
    services_of(app).ledger.append(web_opt_in(OTHER_USER, ref="form-2"))
    due = outbox.submit(UTILITY, "req-1", "staff:test").message_id
    other = outbox.submit(Message(OTHER_USER, UTILITY.kind, template=UTILITY.template), "req-2", "staff:test").message_id
    sent = outbox.submit(UTILITY, "req-3", "staff:test").message_id
    assert sender.send(sent) is Outcome.SENT
    claimed = outbox.claim_many([due, other, sent, "no-such-message"])
    assert sorted(m.id for m in claimed) == sorted([due, other]) and all(m.attempts == 1 for m in claimed)
    assert outbox.claim_many([due, other]) == []  # leased now


def test_a_job_sends_its_messages_through_the_batched_path(app, outbox, graph):
    ledger = services_of(app).ledger
    users = [f"1555000{n:04d}" for n in range(30)]
    for user in users:
        ledger.append(web_opt_in(user, ref=f"form-{user}"))
    ids = [outbox.submit(Message(u, UTILITY.kind, template=UTILITY.template), f"req-{u}", "staff:test").message_id for u in users]
    ledger.append(opt_out(users[0], ref="stop-0"))  # after queuing: the batched check at send time sees it
    runtime = SendRuntime(services_of(app))
    runtime.dispatch(ids + ids)  # a job repeated: each message is claimed once
    runtime.shutdown()
    assert graph.sent_to() == {u: 1 for u in users[1:]}
    assert [outbox.get(i).state for i in ids] == [MessageState.BLOCKED] + [MessageState.SENT] * 29
    assert outbox.get(ids[0]).reason == "opted_out"


def test_a_database_outage_after_the_call_is_waited_out_not_sent_again(app, outbox, graph):
    """The call went out; recording it fails while the database is down. The thread keeps
    trying, so the message is recorded sent once the database is back, never sent twice."""
    services = services_of(app)
    services.ledger.append(web_opt_in())
    message_id = outbox.submit(UTILITY, "req-1", "staff:test").message_id
    working, failures = outbox.mark_sent_many, []

    def database_down_twice(sends):
        if len(failures) < 2:
            failures.append(sends)
            raise sa.exc.OperationalError("UPDATE outbound_messages", {}, Exception("server closed the connection"))
        return working(sends)

    outbox.mark_sent_many = database_down_twice
    pauses = []
    sender = Sender(outbox, services.cloud_api, services.throughput_limiter, services.pair_limiter, services.opt_out_marks, sleep=lambda s: pauses.append(s) if s >= 0.5 else None)
    assert sender.send(message_id) is Outcome.SENT
    assert outbox.get(message_id).state is MessageState.SENT and len(failures) == 2 and pauses == [0.5, 1.0]
    assert graph.sent_to() == {USER: 1}
