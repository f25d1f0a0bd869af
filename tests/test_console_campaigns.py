"""The console's campaign pages (SPEC §8) on both databases: a CSV upload and its dry run, the
send recorded as the staff member, parameters checked against Meta's catalog, the campaign page
with its funnel, chart, failures and CSV, pause and resume, and what a viewer may not do."""
from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from bot import create_app
from bot.console.opt_out_chart import chart, moments
from bot.domain.staff import Role
from bot.services import services_of, sync_templates
from bot.storage.campaign_reports import Reach
from bot.storage.db import writer
from bot.storage.schema import campaigns as campaigns_table
from bot.storage.schema import outbound_messages
from tests.conftest import app_config
from tests.helpers import opt_out, web_opt_in
from tests.test_console_auth import csrf_of, page_text, sign_in
from tests.test_identities import send_queued
from tests.test_staff_accounts import add_staff
from tests.test_templates import WABA_ID

OPERATOR = "ann@example.com"
CONSENTING = ["16505550001", "16505550002", "16505550003"]
STRANGER = "16505550099"  # never opted in
LIST_CSV = "wa_id,name\n16505550001,A\n16505550002,B\n+1 650 555 0003,C\n16505550001,A again\n,\n12,short\n16505550099,D\n"


def opted_in(app, numbers: list[str] = CONSENTING) -> None:
    for n, number in enumerate(numbers):
        services_of(app).ledger.append(web_opt_in(number, ref=f"form-{n}"))


def signed_in(app, email: str = OPERATOR, role: Role = Role.OPERATOR):
    add_staff(app, email, role)
    client = app.test_client()
    assert sign_in(client, email).status_code == 302
    return client


def upload(client, csv_text: str = LIST_CSV, **form: str):
    token = csrf_of(client.get("/console/campaigns/new"))
    fields = {"name": "spring_sale", "language": "en_US", "category": "marketing", **form}
    return client.post(
        "/console/campaigns/new", content_type="multipart/form-data",
        data={"csrf_token": token, **fields, "recipients": (io.BytesIO(csv_text.encode()), "customers.csv")},
    )


def start_campaign(client) -> str:
    dry_run = upload(client)
    page = client.get(dry_run.headers["Location"])
    sent = client.post(re.search(r'action="([^"]+/send)"', page.get_data(as_text=True)).group(1), data={"csrf_token": csrf_of(page)})
    assert sent.status_code == 302, page_text(sent)
    return sent.headers["Location"].rsplit("/", 1)[-1]


def messages(app) -> list[sa.Row]:
    with services_of(app).engine.connect() as conn:
        return conn.execute(sa.select(outbound_messages).order_by(outbound_messages.c.recipient)).all()


# -- a new campaign: upload, dry run, send -----------------------------------------------------


def test_an_upload_shows_its_dry_run_then_send_queues_it_as_the_staff_member(app):
    opted_in(app)
    client = signed_in(app)
    dry_run = upload(client)
    assert dry_run.status_code == 302 and "/console/campaigns/new/" in dry_run.headers["Location"]
    assert messages(app) == []  # an upload queues nothing

    page = client.get(dry_run.headers["Location"])
    text = page_text(page)
    assert page.status_code == 200
    assert "customers.csv, 7 rows" in text
    assert "would be queued 3 skipped 2 listed again 1 blank rows 1" in text
    assert "invalid_recipient 1 12" in text and f"no_consent 1 {STRANGER}" in text
    assert "Send to 3 recipients" in text
    assert messages(app) == []  # nor does the dry run

    campaign_id = start_campaign(client)
    sent = messages(app)
    assert [(m.recipient, m.state, m.requested_by) for m in sent] == [
        *((number, "queued", f"staff:{OPERATOR}") for number in CONSENTING), (STRANGER, "blocked", f"staff:{OPERATOR}"),
    ]
    assert {m.campaign_id for m in sent} == {campaign_id}
    with services_of(app).engine.connect() as conn:
        assert conn.execute(sa.select(campaigns_table.c.requested_by)).scalar_one() == f"staff:{OPERATOR}"

    again = client.get(f"/console/campaigns/{campaign_id}")
    assert again.status_code == 200 and "spring_sale (en_US)" in page_text(again)


def test_sending_the_same_dry_run_twice_starts_one_campaign(app):
    opted_in(app)
    client = signed_in(app)
    page = client.get(upload(client).headers["Location"])
    action = re.search(r'action="([^"]+/send)"', page.get_data(as_text=True)).group(1)
    first, second = (client.post(action, data={"csrf_token": csrf_of(page)}) for _ in range(2))
    assert first.headers["Location"] == second.headers["Location"]
    assert len(messages(app)) == 4


def test_a_dry_run_belongs_to_who_uploaded_it(app):
    opted_in(app)
    location = upload(signed_in(app)).headers["Location"]
    other = signed_in(app, "bob@example.com")
    assert other.get(location).status_code == 404
    refused = other.post(location + "/send", data={"csrf_token": csrf_of(other.get("/console/campaigns"))})
    assert refused.status_code == 404 and messages(app) == []


@pytest.mark.parametrize("csv_text,reason", [
    ("", "customers.csv is empty"),
    ("name,city\nA,B\n", "customers.csv: no wa_id column in name, city"),
    ("wa_id\n", "customers.csv has 0 rows: a campaign takes 1 to 100,000"),
])
def test_a_list_that_cannot_be_read_is_refused_with_the_reason(app, csv_text, reason):
    refused = upload(signed_in(app), csv_text)
    assert refused.status_code == 422 and reason in page_text(refused)


def test_a_typed_template_that_is_not_a_template_name_is_refused(app):
    refused = upload(signed_in(app), name="Spring Sale!")
    assert refused.status_code == 422 and "template.name: must be a template name" in page_text(refused)


@pytest.fixture
def catalog_app(database_url, redis_url, graph):
    """An app with Meta's template catalog (WHATSAPP_BUSINESS_ACCOUNT_ID), read from the imitation."""
    app = create_app(app_config(database_url, redis_url, graph, WHATSAPP_BUSINESS_ACCOUNT_ID=WABA_ID))
    sync_templates(services_of(app))
    yield app
    services_of(app).dispose()


def test_with_the_catalog_its_templates_are_chosen_and_their_parameter_count_checked(catalog_app):
    opted_in(catalog_app)
    client = signed_in(catalog_app)
    choose = page_text(client.get("/console/campaigns/new"))
    assert "order_update (en_US) · utility" in choose and "spring_sale (en_US) · marketing" in choose
    assert "winter_sale" not in choose  # paused by Meta: not offered

    form = client.get("/console/campaigns/new?template=order_update/en_US")
    assert "Your order {{1}} is {{2}}." in page_text(form)
    assert re.findall(r'name="(body\.\d)"', form.get_data(as_text=True)) == ["body.1", "body.2"]

    one_missing = upload(client, template="order_update/en_US", **{"body.1": "#1042", "body.2": " "})
    assert one_missing.status_code == 422
    assert "template.components: template order_update (en_US) takes 2 body parameter(s), 1 given" in page_text(one_missing)
    assert 'value="#1042"' in one_missing.get_data(as_text=True)  # what was typed stays

    complete = upload(client, template="order_update/en_US", **{"body.1": "#1042", "body.2": "on its way"})
    assert complete.status_code == 302
    start = client.get(complete.headers["Location"])
    assert "order_update (en_US) · utility · customers.csv, 7 rows" in page_text(start)
    client.post(re.search(r'action="([^"]+/send)"', start.get_data(as_text=True)).group(1), data={"csrf_token": csrf_of(start)})
    content = messages(catalog_app)[0].content
    assert '"parameters": [{"type": "text", "text": "#1042"}, {"type": "text", "text": "on its way"}]' in content


def test_a_template_not_approved_in_the_catalog_cannot_be_chosen(catalog_app):
    client = signed_in(catalog_app)
    assert client.get("/console/campaigns/new?template=winter_sale/en_US").status_code == 404
    assert upload(client, template="winter_sale/en_US").status_code == 404


# -- the campaign page -------------------------------------------------------------------------


def test_the_campaign_page_shows_its_funnel_opt_out_rate_and_failures_by_code(app, graph):
    opted_in(app)
    client = signed_in(app)
    campaign_id = start_campaign(client)
    graph.fail[CONSENTING[0]] = 131026  # not on WhatsApp
    send_queued(app)
    services_of(app).ledger.append(opt_out(CONSENTING[1], ref="stop-after"))

    page = client.get(f"/console/campaigns/{campaign_id}")
    text = page_text(page)
    assert page.status_code == 200
    assert re.search(r"Queued 0 .*Sent 2 .*Delivered 0 .*Read 0 .*Failed 1 .*Blocked 1", text, re.I)
    assert "50.0% : 1 of 2 reached opted out since" in text
    assert "131026 the number is not on WhatsApp, or cannot receive this message" in text
    assert "<svg class=\"chart\"" in page.get_data(as_text=True) and "<polyline class=\"rate\"" in page.get_data(as_text=True)

    progress = client.get(f"/console/campaigns/{campaign_id}/progress.json").get_json()
    assert {key: progress[key] for key in ("queued", "sent", "delivered", "failed", "blocked", "reached", "opt_outs")} == {
        "queued": 0, "sent": 2, "delivered": 0, "failed": 1, "blocked": 1, "reached": 2, "opt_outs": 1,
    }
    assert progress["status"] == "finished" and progress["opt_out_percent"] == "50.0%"


def test_the_recipient_csv_has_every_message_as_the_ledger_has_it(app, graph):
    opted_in(app)
    client = signed_in(app)
    campaign_id = start_campaign(client)
    graph.fail[CONSENTING[0]] = 131026
    send_queued(app)
    download = client.get(f"/console/campaigns/{campaign_id}/recipients.csv")
    assert download.status_code == 200 and download.mimetype == "text/csv"
    assert download.headers["Content-Disposition"] == f'attachment; filename="campaign-{campaign_id}.csv"'
    rows = sorted(csv.reader(io.StringIO(download.get_data(as_text=True))))
    by_number = {row[0]: row for row in rows}
    assert by_number["recipient"] == ["recipient", "state", "reason", "error_code", "meta_message_id", "sent_at"]
    assert len(rows) == 5
    assert by_number[STRANGER][1:5] == ["blocked", "no_consent", "", ""]
    states = sorted((row[1], row[3]) for number, row in by_number.items() if number in CONSENTING)
    assert states == [("failed", "131026"), ("sent", ""), ("sent", "")]
    assert all(row[4].startswith("wamid.") and row[5].startswith("20") for row in rows if row[1] == "sent")


def test_pause_and_resume_and_a_finished_campaign_is_not_paused(app):
    opted_in(app)
    client = signed_in(app)
    campaign_id = start_campaign(client)
    page = f"/console/campaigns/{campaign_id}"
    assert "Pause" in page_text(client.get(page))

    paused = client.post(f"{page}/pause", data={"csrf_token": csrf_of(client.get(page))})
    assert paused.status_code == 302
    shown = page_text(client.get(paused.headers["Location"]))
    assert "The campaign is paused: its queued messages wait." in shown and f"Paused: paused by staff:{OPERATOR}" in shown and "Resume" in shown

    resumed = client.post(f"{page}/resume", data={"csrf_token": csrf_of(client.get(page))})
    assert "The campaign runs again." in page_text(client.get(resumed.headers["Location"]))
    assert services_of(app).campaigns.progress(campaign_id).status.value == "running"

    send_queued(app)
    refused = client.post(f"{page}/pause", data={"csrf_token": csrf_of(client.get(page))})
    assert refused.status_code == 409
    assert f"Not paused: campaign {campaign_id} is finished: none of its messages is left to send" in page_text(refused)
    assert services_of(app).campaigns.progress(campaign_id).status.value == "finished"


def test_a_viewer_sees_the_campaigns_but_no_button_and_a_forged_post_is_refused(app):
    opted_in(app)
    campaign_id = start_campaign(signed_in(app))
    viewer = signed_in(app, "vic@example.com", Role.VIEWER)
    listing = viewer.get("/console/campaigns")
    assert listing.status_code == 200 and "spring_sale (en_US)" in page_text(listing) and "New campaign" not in page_text(listing)
    page = viewer.get(f"/console/campaigns/{campaign_id}")
    assert page.status_code == 200 and "<form method=\"post\" action=\"/console/campaigns/" not in page.get_data(as_text=True)
    assert viewer.get(f"/console/campaigns/{campaign_id}/recipients.csv").status_code == 200

    token = csrf_of(page)
    for path in (f"/console/campaigns/{campaign_id}/pause", f"/console/campaigns/{campaign_id}/resume", "/console/campaigns/new"):
        refused = viewer.post(path, data={"csrf_token": token})
        assert refused.status_code == 403 and "This page needs the operator role" in page_text(refused)
    assert viewer.get("/console/campaigns/new").status_code == 403
    assert services_of(app).campaigns.progress(campaign_id).status.value == "running"


def test_an_unknown_campaign_is_a_404_page(app):
    client = signed_in(app)
    for path in ("/console/campaigns/nope", "/console/campaigns/nope/progress.json", "/console/campaigns/nope/recipients.csv"):
        assert client.get(path).status_code == 404


def test_the_list_shows_each_campaign_with_its_state_and_the_nav_links_it(app):
    client = signed_in(app)
    assert "No campaigns yet." in page_text(client.get("/console/campaigns"))
    opted_in(app)
    campaign_id = start_campaign(client)
    with writer(services_of(app).engine).begin() as conn:
        conn.execute(outbound_messages.update().values(state="delivered"))
    listing = client.get("/console/campaigns")
    assert f'href="/console/campaigns/{campaign_id}"' in listing.get_data(as_text=True)
    assert re.search(r"finished .* 4 recipients .*delivered 4", page_text(listing))
    assert 'href="/console/campaigns"' in client.get("/console").get_data(as_text=True)


def test_the_opt_out_rate_over_time_counts_who_was_reached_and_opted_out_by_each_moment():
    start = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    reach = Reach(reached=[start, start + timedelta(hours=1), start + timedelta(hours=1)], opted_out=[start + timedelta(hours=2)])
    points = moments(reach, count=4)
    assert [(point.at - start, point.reached, point.opted_out) for point in points] == [
        (timedelta(0), 1, 0), (timedelta(minutes=30), 1, 0), (timedelta(hours=1), 3, 0), (timedelta(hours=1, minutes=30), 3, 0),
        (timedelta(hours=2), 3, 1),
    ]
    drawn = chart(points, limit=0.02)
    assert drawn.latest.rate == pytest.approx(1 / 3) and drawn.x_labels[-1][2] == "14:00"
    last_x, last_y = map(float, drawn.points.split()[-1].split(","))
    assert last_x == drawn.right_edge and last_y < drawn.limit_y  # at the right end, above the pause line (SVG's y grows down)
    assert moments(Reach([], [])) == [] and chart([], 0.02) is None


def test_the_last_moment_of_the_chart_counts_the_latest_opt_out():
    """A span that does not divide evenly into microseconds must not leave the latest event out."""
    start = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    latest = start + timedelta(microseconds=1_000_001)
    points = moments(Reach([start, start], [latest]), count=24)
    assert (points[-1].at, points[-1].opted_out, points[-1].rate) == (latest, 1, 0.5)
