"""Campaign pausing (R11): Meta's account, quality and template notices, and the opt-out rate."""
from __future__ import annotations

import copy
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from rq import Queue

from bot.domain.policy import MessageKind, Refusal
from bot.services import services_of
from bot.storage.campaigns import CampaignRefused, Campaigns, Status
from bot.storage.outbox import Template
from bot.storage.schema import account_notices, outbound_messages
from tests.conftest import ADMIN_TOKEN
from tests.helpers import opt_out, web_opt_in
from tests.test_webhook import payload, post

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SPRING_SALE = Template("spring_sale", "en_US")
RECIPIENTS = [f"1650555{n:04d}" for n in range(10)]


@pytest.fixture
def campaigns(app) -> Campaigns:
    ledger = services_of(app).ledger
    for n, wa_id in enumerate(RECIPIENTS):
        ledger.append(web_opt_in(wa_id, ref=f"form-{n}"))
    return services_of(app).campaigns


def start(campaigns: Campaigns, template: Template = SPRING_SALE) -> str:
    result = campaigns.send(template, MessageKind.MARKETING_TEMPLATE, RECIPIENTS, "staff:test")
    assert result.queued == len(RECIPIENTS)
    return result.campaign_id


def quality(event: str, at: int | None = None) -> dict:
    """A quality notice; `at`: the entry's `time`, when Meta says it happened."""
    body = copy.deepcopy(payload("phone_number_quality_update.json"))
    body["entry"][0]["changes"][0]["value"]["event"] = event
    if at is not None:
        body["entry"][0]["time"] = at
    return body


def test_a_quality_flag_pauses_running_campaigns_refuses_new_ones_and_resume_until_cleared(client, campaigns):
    campaign_id = start(campaigns)
    assert post(client, quality("FLAGGED")).status_code == 200
    progress = campaigns.progress(campaign_id)
    assert progress.status is Status.PAUSED and "FLAGGED" in progress.pause_reason
    refused = campaigns.send(SPRING_SALE, MessageKind.MARKETING_TEMPLATE, RECIPIENTS + ["12"], "staff:test")
    assert (refused.campaign_id, refused.queued, refused.skipped) == (None, 0, {"paused": 10, "invalid_recipient": 1})
    response = client.post("/api/v1/campaigns", headers=AUTH, json={
        "template": {"name": "spring_sale", "language": "en_US", "category": "marketing"}, "recipients": RECIPIENTS})
    assert response.status_code == 409 and response.get_json()["reason"] == "paused"
    with pytest.raises(CampaignRefused, match="FLAGGED"):
        campaigns.resume(campaign_id)
    assert post(client, quality("UNFLAGGED")).status_code == 200
    assert campaigns.resume(campaign_id).status is Status.RUNNING


def test_a_flag_older_than_the_clearing_delivered_after_it_pauses_nothing(client, campaigns):
    """Meta delivers out of order: the FLAGGED of an hour ago, late, after the UNFLAGGED that followed it."""
    now = int(time.time())
    campaign_id = start(campaigns)
    assert post(client, quality("UNFLAGGED", at=now)).status_code == 200
    assert post(client, quality("FLAGGED", at=now - 3600)).status_code == 200
    assert campaigns.progress(campaign_id).status is Status.RUNNING
    assert campaigns.account_flag() is None
    assert [row.event for row in kept_notices(campaigns)] == ["UNFLAGGED", "FLAGGED"]  # both kept for staff


def test_the_same_flag_on_another_day_is_another_notice(client, campaigns):
    """Flagged, cleared, flagged again: the same words, a new notice that pauses again (the time tells them apart)."""
    now = int(time.time())
    campaign_id = start(campaigns)
    for event, at in (("FLAGGED", now - 7200), ("UNFLAGGED", now - 3600)):
        post(client, quality(event, at))
    assert campaigns.resume(campaign_id).status is Status.RUNNING
    for _ in range(2):  # and its redelivery is still one notice
        assert post(client, quality("FLAGGED", now)).status_code == 200
    assert campaigns.progress(campaign_id).status is Status.PAUSED
    assert [row.event for row in kept_notices(campaigns)] == ["FLAGGED", "UNFLAGGED", "FLAGGED"]


def test_an_older_template_notice_does_not_pause_what_a_newer_one_approved(client, campaigns):
    now = int(time.time())
    sale = start(campaigns)
    approved = copy.deepcopy(payload("template_status_paused.json"))
    approved["entry"][0]["time"] = now
    approved["entry"][0]["changes"][0]["value"]["event"] = "APPROVED"
    paused = copy.deepcopy(payload("template_status_paused.json"))
    paused["entry"][0]["time"] = now - 600
    for body in (approved, paused):
        assert post(client, body).status_code == 200
    assert campaigns.progress(sale).status is Status.RUNNING


def kept_notices(campaigns: Campaigns) -> list:
    with campaigns.engine.connect() as conn:
        return conn.execute(sa.select(account_notices).order_by(account_notices.c.id)).all()


def test_an_account_violation_pauses_every_running_campaign(client, campaigns):
    first, second = start(campaigns), start(campaigns, Template("order_update", "en"))
    assert post(client, payload("account_update_violation.json")).status_code == 200
    for campaign_id in (first, second):
        assert "ACCOUNT_VIOLATION" in campaigns.progress(campaign_id).pause_reason
    assert campaigns.account_flag() is None  # a violation pauses what runs; staff decide when to resume
    assert campaigns.resume(first).status is Status.RUNNING


def test_a_paused_template_pauses_only_its_campaigns(client, campaigns):
    sale, update = start(campaigns), start(campaigns, Template("order_update", "en"))
    assert post(client, payload("template_status_paused.json")).status_code == 200
    assert campaigns.progress(sale).status is Status.PAUSED
    assert "spring_sale" in campaigns.progress(sale).pause_reason
    assert campaigns.progress(update).status is Status.RUNNING


def test_informational_notices_pause_nothing(client, campaigns):
    campaign_id = start(campaigns)
    for event in ("UPGRADE", "UNFLAGGED", "ONBOARDING"):
        post(client, quality(event))
    assert campaigns.progress(campaign_id).status is Status.RUNNING


def reach(app, campaign_id: str, count: int) -> list[str]:
    """Mark `count` of the campaign's messages sent, as the worker would; returns their recipients."""
    outbox = services_of(app).outbox
    reached = sorted(_messages(app, campaign_id), key=lambda message: message.recipient)[:count]
    for message in reached:
        claimed = outbox.claim(message.id)
        outbox.mark_sent(message.id, f"wamid.{message.id}", claimed.consent_event_id)
    return [message.recipient for message in reached]


def test_the_opt_out_rate_pauses_a_campaign_once_enough_recipients_were_reached(app, campaigns):
    watcher = Campaigns(campaigns.engine, campaigns.ledger, campaigns.outbox, max_opt_out_rate=0.2, min_reached=5)
    campaign_id = start(campaigns)
    reached = reach(app, campaign_id, 6)
    ledger = services_of(app).ledger
    ledger.append(opt_out(reached[0], ref="stop-a"))
    assert watcher.enforce_opt_out_limit() == []  # 1 of 6 = 17%, under 20%
    ledger.append(opt_out(reached[1], ref="stop-b"))
    assert watcher.enforce_opt_out_limit() == [campaign_id]  # 2 of 6 = 33%
    progress = watcher.progress(campaign_id)
    assert (progress.status, progress.opt_outs, progress.states["sent"]) == (Status.PAUSED, 2, 6)
    assert "33.3%" in progress.pause_reason and "CAMPAIGN_MAX_OPT_OUT_RATE" in progress.pause_reason
    assert watcher.enforce_opt_out_limit() == []  # paused already


def test_opt_outs_before_the_campaign_reached_someone_do_not_count(app, campaigns):
    watcher = Campaigns(campaigns.engine, campaigns.ledger, campaigns.outbox, max_opt_out_rate=0.01, min_reached=1)
    campaign_id = start(campaigns)
    services_of(app).ledger.append(opt_out(RECIPIENTS[0], ref="stop-early"))
    reach(app, campaign_id, 3)  # (the sender would have blocked the first; here it is marked sent regardless)
    assert watcher.progress(campaign_id).opt_outs == 0 and watcher.enforce_opt_out_limit() == []


def test_a_paused_campaigns_messages_wait_and_go_after_resume(app, campaigns):
    outbox = services_of(app).outbox
    campaign_id = start(campaigns)
    waiting = [message.id for message in _messages(app, campaign_id)]
    campaigns.pause(campaign_id, "paused by staff")
    assert outbox.claim_many(waiting) == []  # a worker that gets their job sends nothing
    assert outbox.due_for_recovery(timedelta(0)) == []  # and the sweeper leaves them alone
    Queue("bulk", connection=services_of(app).redis).empty()
    campaigns.resume(campaign_id)
    queued_again = [id_ for job in Queue("bulk", connection=services_of(app).redis).jobs for id_ in job.args[0]]
    assert sorted(queued_again) == sorted(waiting)
    assert {message.recipient for message in outbox.claim_many(waiting)} == set(RECIPIENTS)


def _messages(app, campaign_id: str) -> list:
    with services_of(app).ledger.engine.connect() as conn:
        return conn.execute(sa.select(outbound_messages).where(outbound_messages.c.campaign_id == campaign_id)).all()


def test_every_entry_of_the_list_is_accounted_for_and_send_time_refusals_told_apart(app, campaigns):
    listed = RECIPIENTS + ["19175550100", "12", "  ", RECIPIENTS[0]]  # no consent, invalid, blank, again
    campaign_id = campaigns.send(SPRING_SALE, MessageKind.MARKETING_TEMPLATE, listed, "staff:test").campaign_id
    outbox = services_of(app).outbox
    stopped = next(message for message in _messages(app, campaign_id) if message.recipient == RECIPIENTS[0])
    outbox.claim(stopped.id)  # as the sender does, which then finds the opt-out that came meanwhile
    outbox.mark_blocked(stopped.id, Refusal.OPTED_OUT)
    progress = campaigns.progress(campaign_id)
    assert (progress.recipients, progress.blank, progress.duplicates, progress.listed) == (11, 1, 1, len(listed))
    assert progress.skipped == {"no_consent": 1, "invalid_recipient": 1}
    assert progress.blocked_at_send == {"opted_out": 1}
    assert progress.states == {"queued": 9, "blocked": 2}
    assert sum(progress.states.values()) == progress.recipients


def test_the_list_of_campaigns_takes_two_queries_however_many_there_are(app, campaigns):
    started = [start(campaigns) for _ in range(3)]
    campaigns.pause(started[0], "paused by staff")
    statements: list[str] = []
    listen = lambda conn, cursor, statement, *args: statements.append(statement)
    sa.event.listen(campaigns.engine, "before_cursor_execute", listen)
    try:
        newest = campaigns.newest(10)
    finally:
        sa.event.remove(campaigns.engine, "before_cursor_execute", listen)
    assert len([statement for statement in statements if statement.startswith("SELECT")]) == 2  # (SQLite adds its BEGIN)
    assert [summary.id for summary in newest] == started[::-1]
    assert [summary.status for summary in newest] == [Status.RUNNING, Status.RUNNING, Status.PAUSED]
    assert all(summary.states == {"queued": len(RECIPIENTS)} for summary in newest)
    assert [summary.id for summary in campaigns.newest(1)] == [started[-1]]


def test_staff_cannot_pause_a_finished_campaign(app, campaigns):
    campaign_id = start(campaigns)
    reach(app, campaign_id, len(RECIPIENTS))
    with pytest.raises(CampaignRefused, match="is finished"):
        campaigns.pause_by_staff(campaign_id, "staff:test")
    assert campaigns.progress(campaign_id).status is Status.FINISHED
