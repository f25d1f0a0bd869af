"""Signing in to the console, out of it, and choosing a password (forced after `flask staff add`).

Sign-in attempts are limited in Redis per email address and per client network, before any
password is checked, so guessing is slow from one place and for one account from everywhere;
password changes count against the account's budget too. A wrong password and an address with
no account are told, and take, the same. Signing out ends the account's sessions everywhere, so
a copied cookie stops working too.
"""
from __future__ import annotations

import hashlib
import logging
import math

from flask import Blueprint, redirect, request, url_for

from bot.client_network import client_network
from bot.console.access import CHANGE_PASSWORD, HOME, SIGN_IN, current_staff, end_session, start_session, to_sign_in
from bot.console.rendering import in_console, render
from bot.services import current_services
from bot.storage.staff import MIN_PASSWORD, AccountRefused

log = logging.getLogger(__name__)
bp = Blueprint("sign_in", __name__)

WRONG = "Wrong email address or password."


@bp.get("/login")
def login():
    if current_staff() is not None:
        return redirect(url_for(HOME))
    notice = "You are signed out." if request.args.get("signed_out") else None
    return render("login", next=request.args.get("next", ""), notice=notice)


@bp.post("/login")
def sign_in():
    email, password, next_page = (request.form.get(field, "") for field in ("email", "password", "next"))
    wait = _wait_for_attempt(email, client_network(request.remote_addr or ""))
    if wait:
        return render("login", 429, error=_too_many(wait), email=email, next=next_page)
    account = current_services().staff.sign_in(email, password)
    if account is None:
        log.info("console: failed sign-in")
        return render("login", 401, error=WRONG, email=email, next=next_page)
    start_session(account)
    log.info("console: %s signed in", account.email)
    if account.must_change_password:
        return redirect(url_for(CHANGE_PASSWORD))
    return redirect(next_page if in_console(next_page) and next_page.isprintable() else url_for(HOME))


@bp.post("/logout")
def sign_out():
    staff = current_staff()
    if staff is not None:
        current_services().staff.end_sessions(staff.email)
        log.info("console: %s signed out", staff.email)
    end_session()
    return redirect(url_for(SIGN_IN, signed_out=1))


@bp.route("/password", methods=["GET", "POST"])
def password():
    """Choose a new password: required before anything else after signing in with a one-time one."""
    staff = current_staff()
    if staff is None:
        return to_sign_in()
    if request.method == "GET":
        return render("password", minimum=MIN_PASSWORD)
    current, new, repeated = (request.form.get(field, "") for field in ("current", "new", "repeat"))
    wait = _wait_for_attempt(staff.email)
    if wait:
        return render("password", 429, minimum=MIN_PASSWORD, error=_too_many(wait))
    if new != repeated:
        return render("password", 422, minimum=MIN_PASSWORD, error="The two new passwords are not the same.")
    try:
        account = current_services().staff.change_password(staff.email, current, new)
    except AccountRefused as refused:
        return render("password", 422, minimum=MIN_PASSWORD, error=f"{str(refused).capitalize()}.")
    start_session(account)  # this browser stays signed in; every other session of the account ends
    log.info("console: %s chose a new password", account.email)
    return redirect(url_for(HOME))


def _wait_for_attempt(email: str, network: str | None = None) -> float:
    """0 when one more attempt is within the limits (and counts it), else seconds to wait."""
    services = current_services()
    account_key = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]  # any text, bounded
    budgets = [(services.account_sign_ins, f"console:sign-in:account:{account_key}")]
    if network is not None:
        budgets.append((services.network_sign_ins, f"console:sign-in:network:{network}"))
    for limiter, key in budgets:
        reservation = limiter.reserve(key, max_wait=0)
        if not reservation.reserved:
            return reservation.wait
    return 0


def _too_many(wait: float) -> str:
    minutes = max(1, math.ceil(wait / 60))
    return f"Too many attempts. Please wait {minutes} minute{'s' if minutes > 1 else ''} and try again."
