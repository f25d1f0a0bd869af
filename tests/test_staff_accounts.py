"""Staff accounts (SPEC §8): `flask staff`, how passwords and tokens are kept, and the staff
API's roles: what each role may call, and that what a staff member causes names them."""
from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from bot.domain.staff import Role
from bot.services import services_of
from bot.storage.schema import campaigns, consent_events, outbound_messages, staff_accounts, staff_tokens
from bot.storage.staff import AccountRefused, StaffAccounts
from tests.helpers import USER, reconfigure, web_opt_in
from tests.test_staff_api import AUTH, OPT_IN, ORDER_UPDATE, ROUTES, SPRING_SALE, events

PASSWORD = "correct horse battery staple"


def shown_secret(output: str) -> str:
    """The secret a command printed: the last word of the line that says it is shown once."""
    [line] = [line for line in output.splitlines() if "shown once" in line]
    return line.rsplit(" ", 1)[1]


def add_staff(app, email: str, role: Role, password: str = PASSWORD) -> None:
    """An account that chose its own password already, as after its first sign-in."""
    accounts = services_of(app).staff
    _, one_time = accounts.add(email, role, "staff:test")
    accounts.change_password(email, one_time, password)


def bearer(app, email: str, role: Role) -> dict[str, str]:
    """The Authorization header of a new API token for a new account with `role`."""
    services_of(app).staff.add(email, role, "staff:test")
    _, token = services_of(app).staff.issue_token(email, "staff:test")
    return {"Authorization": f"Bearer {token}"}


def rows(app, table: sa.Table) -> list[sa.Row]:
    with services_of(app).engine.connect() as conn:
        return conn.execute(sa.select(table)).all()


# -- flask staff -----------------------------------------------------------------------------


def test_add_prints_a_one_time_password_kept_only_as_an_argon2_hash(runner, app):
    result = runner.invoke(args=["staff", "add", " Ann.Lee@Example.COM ", "--role", "operator"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "added ann.lee@example.com (operator)"
    one_time = shown_secret(result.output)
    [row] = rows(app, staff_accounts)
    assert (row.email, row.role, row.must_change_password, row.created_by) == ("ann.lee@example.com", "operator", True, "staff:cli")
    assert row.password_hash.startswith("$argon2id$") and one_time not in row.password_hash
    accounts = services_of(app).staff
    assert accounts.sign_in("ANN.LEE@example.com", one_time).must_change_password
    assert accounts.sign_in("ann.lee@example.com", one_time + "x") is None


@pytest.mark.parametrize(
    "args,reason",
    [
        (["add", "ann@example.com", "--role", "operator"], "Error: ann@example.com already has an account"),
        (["add", "ANN@example.com", "--role", "viewer"], "Error: ann@example.com already has an account"),
        (["add", "bob@example.com", "--role", "boss"], "Error: the role must be viewer, operator or admin, not 'boss'"),
        (["add", "bob", "--role", "admin"], "Error: 'bob' is not an email address (name@example.com)"),
        (["add", "b@" + "x" * 250 + ".com", "--role", "admin"], "Error: an email address has at most 254 characters"),
        (["token", "nobody@example.com"], "Error: no staff account has the address 'nobody@example.com'"),
        (["disable", "nobody@example.com"], "Error: no staff account has the address 'nobody@example.com'"),
    ],
)
def test_staff_commands_refuse_in_one_line(runner, app, args, reason):
    services_of(app).staff.add("ann@example.com", Role.OPERATOR, "staff:test")
    result = runner.invoke(args=["staff", *args])
    assert result.exit_code == 1 and result.output.splitlines() == [reason]
    assert len(rows(app, staff_accounts)) == 1 and rows(app, staff_tokens) == []


def test_token_is_shown_once_and_kept_only_as_its_sha256(runner, app):
    runner.invoke(args=["staff", "add", "ann@example.com", "--role", "viewer"])
    result = runner.invoke(args=["staff", "token", "Ann@Example.com"])
    assert result.exit_code == 0, result.output
    token = shown_secret(result.output)
    assert token.startswith("cfstaff_") and len(token) >= 40
    [row] = rows(app, staff_tokens)
    assert (row.digest, row.email, row.created_by) == (hashlib.sha256(token.encode()).hexdigest(), "ann@example.com", "staff:cli")
    assert token not in str(rows(app, staff_accounts)) + str(rows(app, staff_tokens))
    assert services_of(app).staff.by_token(token).email == "ann@example.com"
    second = shown_secret(runner.invoke(args=["staff", "token", "ann@example.com"]).output)
    assert second != token and len(rows(app, staff_tokens)) == 2


def test_list_shows_each_account_with_its_role_and_status(runner, app):
    assert runner.invoke(args=["staff", "list"]).output.startswith("no staff accounts")
    add_staff(app, "ann@example.com", Role.ADMIN)
    services_of(app).staff.add("bob@example.com", Role.VIEWER, "staff:ann@example.com")
    services_of(app).staff.add("cy@example.com", Role.OPERATOR, "staff:test")
    assert runner.invoke(args=["staff", "disable", "cy@example.com"]).exit_code == 0
    lines = runner.invoke(args=["staff", "list"]).output.splitlines()
    assert lines[0].split() == ["EMAIL", "ROLE", "STATUS", "CREATED", "BY"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["ann@example.com", "admin", "active"], ["bob@example.com", "viewer", "must"], ["cy@example.com", "operator", "disabled"],
    ]
    assert lines[2].endswith("staff:ann@example.com")


def test_a_disabled_account_can_neither_sign_in_nor_get_a_token(runner, app):
    add_staff(app, "ann@example.com", Role.OPERATOR)
    first = runner.invoke(args=["staff", "disable", "ann@example.com"])
    again = runner.invoke(args=["staff", "disable", "ann@example.com"])
    assert first.exit_code == again.exit_code == 0 and "ann@example.com is disabled" in again.output
    assert services_of(app).staff.sign_in("ann@example.com", PASSWORD) is None
    token = runner.invoke(args=["staff", "token", "ann@example.com"])
    assert token.exit_code == 1 and token.output == "Error: ann@example.com is disabled\n"


class CountingHasher(PasswordHasher):
    """argon2 as used, counting the (deliberately slow) verifications."""

    verified = 0

    def verify(self, hash, password):
        self.verified += 1
        return super().verify(hash, password)


def test_a_wrong_address_costs_the_same_hashing_as_a_wrong_password(app):
    hasher = CountingHasher()
    accounts = StaffAccounts(services_of(app).engine, hasher=hasher)
    add_staff(app, "ann@example.com", Role.VIEWER)
    for email in ("ann@example.com", "nobody@example.com", "not an address"):
        before = hasher.verified
        assert accounts.sign_in(email, "wrong password!") is None
        assert hasher.verified == before + 1, email
    assert accounts.sign_in("ann@example.com", PASSWORD) is not None


@pytest.mark.parametrize(
    "current,new,reason",
    [
        ("not it at all", "a brand new password", "the current password is wrong"),
        (PASSWORD, "too short", "the new password must have 12 to 1024 characters"),
        (PASSWORD, PASSWORD, "the new password must differ from the current one"),
    ],
)
def test_a_password_change_is_refused_with_its_reason(app, current, new, reason):
    add_staff(app, "ann@example.com", Role.VIEWER)
    with pytest.raises(AccountRefused, match=reason):
        services_of(app).staff.change_password("ann@example.com", current, new)
    assert services_of(app).staff.sign_in("ann@example.com", PASSWORD) is not None


# -- the staff API: roles ------------------------------------------------------------------

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
POSTS = [(method, path) for method, path in ROUTES if method == "POST"]
GETS = [(method, path) for method, path in ROUTES if method == "GET"]


@sqlite_only
@pytest.mark.parametrize("method,path", POSTS)
def test_a_viewer_token_may_not_post_anywhere(client, app, method, path):
    response = client.open(path, method=method, headers=bearer(app, "vic@example.com", Role.VIEWER), json=OPT_IN)
    assert response.status_code == 403
    assert response.get_json() == {"error": "forbidden", "detail": "this needs the operator role; this token's account is viewer"}
    assert events(app) == [] and rows(app, outbound_messages) == [] and rows(app, campaigns) == []


@sqlite_only
@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR, Role.ADMIN])
@pytest.mark.parametrize("method,path", GETS)
def test_every_role_may_read(client, app, role, method, path):
    response = client.open(path, method=method, headers=bearer(app, "ann@example.com", role))
    assert response.status_code not in (401, 403), response.get_data(as_text=True)


@sqlite_only
@pytest.mark.parametrize("role", [Role.OPERATOR, Role.ADMIN])
@pytest.mark.parametrize("method,path", POSTS)
def test_operators_and_admins_may_post_everywhere(client, app, role, method, path):
    response = client.open(path, method=method, headers=bearer(app, "ann@example.com", role), json=OPT_IN)
    assert response.status_code not in (401, 403), response.get_data(as_text=True)


def test_an_opt_in_recorded_with_a_staff_token_names_the_staff_member(client, app):
    response = client.post("/api/v1/consents", headers=bearer(app, "Ann@Example.com", Role.OPERATOR), json=OPT_IN)
    assert response.status_code == 201 and response.get_json()["recorded_by"] == "staff:ann@example.com"
    [event] = services_of(app).ledger.history(USER)
    assert event.recorded_by == "staff:ann@example.com" and services_of(app).ledger.verify().ok
    audit = client.get("/api/v1/audit?format=jsonl", headers=bearer(app, "vic@example.com", Role.VIEWER))
    assert '"recorded_by": "staff:ann@example.com"' in audit.get_data(as_text=True)


def test_the_longest_address_fits_in_what_it_records(client, app):
    email = "a" * 64 + "@" + ".".join(["b" * 62, "b" * 62, "b" * 60]) + ".cc"
    assert len(email) == 254
    headers = bearer(app, email, Role.OPERATOR)
    assert client.post("/api/v1/consents", headers=headers, json=OPT_IN).status_code == 201
    message = client.post("/api/v1/messages", headers=headers, json={"to": USER, "template": ORDER_UPDATE})
    campaign = client.post("/api/v1/campaigns", headers=headers, json={"template": SPRING_SALE, "recipients": [USER]})
    assert (message.status_code, campaign.status_code) == (202, 202)
    recorded = {row.recorded_by for row in rows(app, consent_events)} | {row.requested_by for row in rows(app, outbound_messages)}
    assert recorded | {row.requested_by for row in rows(app, campaigns)} == {f"staff:{email}"}


def test_messages_and_campaigns_sent_with_a_staff_token_name_the_staff_member(client, app):
    services_of(app).ledger.append(web_opt_in())
    headers = bearer(app, "ann@example.com", Role.OPERATOR)
    message = client.post("/api/v1/messages", headers=headers, json={"to": USER, "template": ORDER_UPDATE})
    campaign = client.post("/api/v1/campaigns", headers=headers, json={"template": SPRING_SALE, "recipients": [USER]})
    assert (message.status_code, campaign.status_code) == (202, 202)
    [campaign_row] = rows(app, campaigns)
    assert campaign_row.requested_by == "staff:ann@example.com"
    assert {(row.campaign_id, row.requested_by) for row in rows(app, outbound_messages)} == {
        (None, "staff:ann@example.com"), (campaign_row.id, "staff:ann@example.com"),
    }


def test_a_disabled_accounts_token_is_refused_at_once(client, app, runner):
    headers = bearer(app, "ann@example.com", Role.OPERATOR)
    assert client.get(f"/api/v1/consents/{USER}", headers=headers).status_code == 200
    assert runner.invoke(args=["staff", "disable", "ann@example.com"]).exit_code == 0
    for method, path in [("GET", f"/api/v1/consents/{USER}"), ("POST", "/api/v1/consents")]:
        response = client.open(path, method=method, headers=headers, json=OPT_IN)
        assert response.status_code == 401 and response.get_json()["detail"] == "this token's staff account is disabled"
    assert events(app) == []


@sqlite_only
def test_an_unknown_staff_token_is_refused(client, app):
    bearer(app, "ann@example.com", Role.ADMIN)
    response = client.get(f"/api/v1/consents/{USER}", headers={"Authorization": "Bearer cfstaff_" + "x" * 43})
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")


@sqlite_only
def test_admin_api_token_stays_a_break_glass_admin_token_recorded_as_staff_api(client, app):
    bearer(app, "ann@example.com", Role.VIEWER)
    response = client.post("/api/v1/consents", headers=AUTH, json=OPT_IN)
    assert response.status_code == 201 and response.get_json()["recorded_by"] == "staff:api"


@sqlite_only
def test_staff_tokens_work_without_admin_api_token(client, app):
    reconfigure(app, admin_api_token=None)
    headers = bearer(app, "ann@example.com", Role.OPERATOR)
    assert client.post("/api/v1/consents", headers=headers, json=OPT_IN).status_code == 201
    assert client.get(f"/api/v1/consents/{USER}", headers=AUTH).status_code == 403
