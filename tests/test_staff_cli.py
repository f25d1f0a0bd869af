"""`flask consent import`, `flask send template` and `flask campaign ...` on both databases."""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from rq import Queue

from bot.domain.consent import Action, Channel, State
from bot.services import services_of
from bot.storage.schema import outbound_messages
from tests.helpers import OTHER_USER, USER, opt_out, web_opt_in

HEADER = "wa_id,action,channel,scope,consent_text,evidence,occurred_at\n"
GOOD_ROWS = (
    '+1 650 555 1234,opt_in,paper,all,"Yes, Acme Bakery may send me offers on WhatsApp.",FORM-2211,2026-10-01T09:30:00Z\n'
    '447700900123,,web,marketing,I agree to WhatsApp offers.,"{""form"": ""signup"", ""ip"": ""203.0.113.9""}",2026-10-02T10:00:00+01:00\n'
    "19175550100,opt_out,ivr,all,,call-8812,2026-10-03T11:00:00Z\n"
)
MIXED_ROWS = (
    "16505550001,opt_in,paper,all,,FORM-1,2026-10-01T09:30:00Z\n"  # no consent text: an existing customer (R3)
    "16505550002,opt_in,email,all,Subscribed to the newsletter,,2026-10-01T09:30:00Z\n"  # no evidence (R4)
    "0650555123,opt_in,paper,all,Yes please,FORM-3,2026-10-01T09:30:00Z\n"  # bad number
    "16505550004,opt_in,whatsapp,all,Yes please,FORM-4,2026-10-01T09:30:00Z\n"  # R5
    "16505550005,opt_in,paper,all,Yes please,FORM-5,\n"  # no date
    "16505550006,opt_in,paper,all,Yes please,FORM-6,2099-01-01T00:00:00Z\n"  # the future
    "16505550007,opt_in,paper,all,Yes please,{not json,2026-10-01T09:30:00Z\n"
    "16505550008,opt_in,paper,all,Yes please,FORM-8,2026-10-01T09:30:00Z,extra\n"
    "16505550009,opt_in,paper,all,Yes please,FORM-9,0001-01-01T00:00:00+14:00\n"  # before year 1 in UTC
    '16505550010,opt_in,paper,all,Yes please,"{""form"": ""\\ud800""}",2026-10-01T09:30:00Z\n'  # half a UTF-16 pair
)


def write(tmp_path, text: str, name: str = "consents.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_import_records_every_good_row_with_its_evidence(runner, ledger, tmp_path):
    result = runner.invoke(args=["consent", "import", write(tmp_path, HEADER + GOOD_ROWS)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "3 recorded, 0 already in the ledger, 0 rejected"
    paper = ledger.history(USER)[0]
    assert (paper.action, paper.channel, paper.evidence, paper.recorded_by) == (Action.OPT_IN, Channel.PAPER, {"reference": "FORM-2211"}, "staff:import")
    assert paper.occurred_at.isoformat() == "2026-10-01T09:30:00+00:00"
    web = ledger.history(OTHER_USER)[0]
    assert (web.scope.value, web.evidence) == ("marketing", {"form": "signup", "ip": "203.0.113.9"})
    assert ledger.state("19175550100").state is State.OPTED_OUT


def test_importing_the_same_file_again_adds_nothing(runner, ledger, tmp_path):
    path = write(tmp_path, HEADER + GOOD_ROWS + GOOD_ROWS.splitlines(keepends=True)[0])  # and one row twice
    assert runner.invoke(args=["consent", "import", path]).output.strip().endswith("3 recorded, 1 already in the ledger, 0 rejected")
    again = runner.invoke(args=["consent", "import", path])
    assert again.exit_code == 0 and again.output.strip().endswith("0 recorded, 4 already in the ledger, 0 rejected")
    assert len(list(ledger.events())) == 3 and ledger.verify().ok


def test_an_import_records_its_opt_outs_while_redis_is_down(app_without_redis, ledger, tmp_path, caplog):
    """An opt-out also leaves a mark in Redis for the send threads (bot.outbound.opt_out_marks); without
    Redis it is recorded all the same, and the failure logged."""
    result = app_without_redis.test_cli_runner().invoke(args=["consent", "import", write(tmp_path, HEADER + GOOD_ROWS)])
    assert result.exit_code == 0 and result.output.strip().endswith("3 recorded, 0 already in the ledger, 0 rejected")
    assert ledger.state("19175550100").state is State.OPTED_OUT
    assert "could not mark 1 opt-out(s) for the send threads" in caplog.text


def test_send_template_while_redis_is_down_fails_in_one_line(app_without_redis, ledger):
    ledger.append(web_opt_in())
    result = app_without_redis.test_cli_runner().invoke(args=["send", "template", "order_update", "--to", USER, "--category", "utility"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.splitlines()[-1].startswith("Error: Redis does not answer (")


def test_a_mixed_file_records_the_good_rows_and_names_each_rejected_line(runner, ledger, tmp_path):
    result = runner.invoke(args=["consent", "import", write(tmp_path, HEADER + GOOD_ROWS + MIXED_ROWS)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    rejected = [line for line in lines if ": rejected: " in line]
    assert [line.split(":")[1] for line in rejected] == ["5", "6", "7", "8", "9", "10", "11", "12", "13", "14"]
    reasons = [
        "consent_text", "needs evidence", "wa_id", "R5", "occurred_at", "future", "JSON", "more cells", "years 1900 to 9999",
        "evidence: must be valid Unicode",
    ]
    for line, says in zip(rejected, reasons):
        assert says in line, line
    assert lines[-1] == "Error: 3 recorded, 0 already in the ledger, 10 rejected"
    assert {event.identifier for event in ledger.events()} == {USER, OTHER_USER, "19175550100"}


@pytest.mark.parametrize(
    "content,says",
    [
        ("", "empty"),
        ("wa_id,consent_text\n16505551234,yes\n", "lacks the column(s) channel, occurred_at"),
        ("wa_id,channel,occurred_at,password\n", "unknown column(s) password"),
    ],
)
def test_a_file_that_cannot_be_imported_says_why_in_one_line(runner, ledger, tmp_path, content, says):
    result = runner.invoke(args=["consent", "import", write(tmp_path, content)])
    assert result.exit_code == 1 and says in result.output and "Traceback" not in result.output
    assert list(ledger.events()) == []


def test_a_file_that_is_not_utf8_or_missing_is_refused(runner, ledger, tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes((HEADER + "16505551234,opt_in,paper,all,Sí señor,F-1,2026-10-01T09:30:00Z\n").encode("latin-1"))
    result = runner.invoke(args=["consent", "import", str(latin)])
    assert result.exit_code == 1 and "not UTF-8" in result.output
    missing = runner.invoke(args=["consent", "import", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    assert runner.invoke(args=["consent", "import", str(tmp_path)]).exit_code == 2  # a directory
    assert list(ledger.events()) == []


def test_send_template_queues_or_names_the_refusal(runner, app, ledger):
    ledger.append(web_opt_in())
    ok = runner.invoke(args=["send", "template", "order_update", "--to", "+1 650 555 1234", "--category", "utility"])
    assert ok.exit_code == 0 and ok.output.startswith("queued message ")
    message_id = ok.output.split()[-1]
    assert services_of(app).outbox.get(message_id).content["template"]["name"] == "order_update"
    assert Queue("replies", connection=services_of(app).redis).count == 1
    refused = runner.invoke(args=["send", "template", "spring_sale", "--to", OTHER_USER, "--category", "marketing"])
    assert refused.exit_code == 1 and "not sent: no_consent" in refused.output
    bad = runner.invoke(args=["send", "template", "Spring Sale", "--to", USER, "--category", "marketing"])
    assert bad.exit_code == 1 and "template.name" in bad.output
    components = runner.invoke(args=["send", "template", "x", "--to", USER, "--category", "utility", "--components", "{"])
    assert components.exit_code == 2 and "--components" in components.output


CAMPAIGN_FILE = f"name,wa_id\nAna,{USER}\nBo,{OTHER_USER}\nCy,19175550100\nDee,12ab\nAna again,+{USER}\nEve,\n\n"  # 7 rows, 2 blank


def start_campaign(runner, ledger, tmp_path, *options: str) -> str:
    """Opt in USER, opt OTHER_USER in and out, and send CAMPAIGN_FILE; returns the last line printed."""
    ledger.append(web_opt_in(USER, ref="f-1"))
    ledger.append(web_opt_in(OTHER_USER, ref="f-2"))
    ledger.append(opt_out(OTHER_USER, ref="s-2"))
    args = ["campaign", "send", "spring_sale", "--recipients", write(tmp_path, CAMPAIGN_FILE, "list.csv"), "--category", "marketing"]
    result = runner.invoke(args=[*args, *options])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def campaign_id_of(summary: str) -> str:
    return summary.split()[1].rstrip(":")


def send_queued(app) -> None:
    """Mark every queued message sent, as the worker would."""
    outbox = services_of(app).outbox
    with outbox.engine.connect() as conn:
        queued = conn.execute(sa.select(outbound_messages.c.id).where(outbound_messages.c.state == "queued")).scalars().all()
    for message_id in queued:
        claimed = outbox.claim(message_id)
        outbox.mark_sent(message_id, f"wamid.{message_id}", claimed.consent_event_id)


def test_campaign_send_dry_run_counts_every_row_and_queues_nothing(runner, app, ledger, tmp_path):
    summary = start_campaign(runner, ledger, tmp_path, "--dry-run")
    assert summary == "dry run: 7 listed: 1 queued, skipped: invalid_recipient 1, no_consent 1, opted_out 1; 1 duplicate(s), 2 blank row(s)"
    assert Queue("bulk", connection=services_of(app).redis).count == 0


def test_campaign_status_accounts_for_every_row_of_the_file(runner, app, ledger, tmp_path):
    summary = start_campaign(runner, ledger, tmp_path)
    assert summary.endswith(": 7 listed: 1 queued, skipped: invalid_recipient 1, no_consent 1, opted_out 1; 1 duplicate(s), 2 blank row(s)")
    campaign_id = campaign_id_of(summary)
    running = runner.invoke(args=["campaign", "status", campaign_id])
    assert running.exit_code == 0 and "state       running, 1 queued" in running.output
    send_queued(app)
    status = runner.invoke(args=["campaign", "status", campaign_id])
    lines = status.output.splitlines()
    assert status.exit_code == 0 and lines[2].startswith("created     ")
    assert lines[:2] + lines[3:] == [
        f"campaign    {campaign_id}",
        "template    spring_sale (en_US), marketing",
        "state       finished: nothing of it is left queued",
        "entries     7 in its list, each counted once below",
        "  blank                       2   28.6%  rows with no number",
        "  invalid number              1   14.3%",
        "  listed again                1   14.3%  sent once",
        "  skipped                     2   28.6%  no_consent 1, opted_out 1",
        "  queued                      0    0.0%",
        "  sent                        1   14.3%  not delivered yet",
        "  delivered                   0    0.0%  not read yet",
        "  read                        0    0.0%",
        "  failed                      0    0.0%",
        "  blocked at send time        0    0.0%",
        "opt-outs    0 of 1 reached (0.0%); it pauses itself above 2.0% once 50 are reached",
    ]
    counts = [int(line[24:31]) for line in lines if line.startswith("  ")]
    assert sum(counts) == 7
    missing = runner.invoke(args=["campaign", "status", "nope"])
    assert (missing.exit_code, missing.output) == (1, "Error: no campaign nope\n")


def test_campaign_pause_and_resume_and_a_finished_campaign_refuses_a_pause(runner, app, ledger, tmp_path):
    campaign_id = campaign_id_of(start_campaign(runner, ledger, tmp_path))
    paused = runner.invoke(args=["campaign", "pause", campaign_id])
    assert (paused.exit_code, paused.output) == (0, f"campaign {campaign_id}: paused, 1 queued\n")
    assert "state       paused: paused by staff:cli" in runner.invoke(args=["campaign", "status", campaign_id]).output
    resumed = runner.invoke(args=["campaign", "resume", campaign_id])
    assert (resumed.exit_code, resumed.output) == (0, f"campaign {campaign_id}: running, 1 queued\n")
    send_queued(app)
    refused = runner.invoke(args=["campaign", "pause", campaign_id])
    assert refused.exit_code == 1
    assert refused.output == f"Error: campaign {campaign_id} is finished: none of its messages is left to send, so there is nothing to pause\n"
    assert "state       finished" in runner.invoke(args=["campaign", "status", campaign_id]).output
    assert runner.invoke(args=["campaign", "pause", "nope"]).exit_code == 1


def test_campaign_list_shows_the_newest_first_with_state_and_counts(runner, app, ledger, tmp_path):
    assert runner.invoke(args=["campaign", "list"]).output == "no campaigns yet: `flask campaign send` starts one\n"
    older = campaign_id_of(start_campaign(runner, ledger, tmp_path))
    nobody = write(tmp_path, "wa_id\n19175550100\n", "nobody.csv")  # no consent: finished at once
    newer = campaign_id_of(runner.invoke(args=["campaign", "send", "order_update", "--recipients", nobody, "--language", "en",
                                               "--category", "utility"]).output.strip().splitlines()[-1])
    result = runner.invoke(args=["campaign", "list"])
    assert result.exit_code == 0, result.output
    header, *rows = [line.split() for line in result.output.splitlines()]
    assert header == ["ID", "TEMPLATE", "CATEGORY", "CREATED", "(UTC)", "STATE", "RECIPIENTS", "QUEUED", "SENT", "DELIVERED", "READ", "FAILED", "BLOCKED"]
    assert [row[:4] + row[6:] for row in rows] == [
        [newer, "order_update", "(en)", "utility", "finished", "1", "0", "0", "0", "0", "0", "1"],
        [older, "spring_sale", "(en_US)", "marketing", "running", "3", "1", "0", "0", "0", "0", "2"],
    ]
    limited = runner.invoke(args=["campaign", "list", "--limit", "1"]).output.splitlines()
    assert [line.split()[0] for line in limited[1:-1]] == [newer] and limited[-1] == "(the newest 1; --limit shows more)"


def test_campaign_send_refuses_a_file_without_numbers(runner, tmp_path):
    result = runner.invoke(args=["campaign", "send", "x", "--recipients", write(tmp_path, "name,city\nAna,Lima\n"), "--category", "utility"])
    assert result.exit_code == 1 and "no wa_id column" in result.output
