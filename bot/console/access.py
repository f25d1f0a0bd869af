"""Who is signed in to the console, and what they may do.

Each request reads the session cookie and then the account it names again, so an account
disabled, given a new password or signed out elsewhere is signed out here at its next request.
Every POST must carry the session's CSRF token (`csrf_field()` in a form) or it is refused
(403) before its view runs. Pages say what they need with `requires(Role.X)`.
"""
from __future__ import annotations

import functools
import hmac
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, abort, current_app, g, redirect, request, url_for
from markupsafe import Markup, escape
from werkzeug.wrappers import Response as BaseResponse

from bot.console.session import IDLE, ConsoleSession, SessionCookies
from bot.domain.staff import Role
from bot.services import current_services
from bot.storage.staff import StaffAccount

COOKIE = "console_session"
CSRF_FIELD = "csrf_token"
SIGN_IN = "console.sign_in.login"
CHANGE_PASSWORD = "console.sign_in.password"
HOME = "console.home.home"


def guard(bp: Blueprint) -> None:
    """Open and renew the session around each request to `bp` (and the blueprints in it)."""
    bp.before_request(_open_session)
    bp.after_request(_renew_session)
    bp.add_app_template_global(csrf_field)
    bp.add_app_template_global(may)


def current_staff() -> StaffAccount | None:
    """The signed-in account (its `recorded_by` is `staff:EMAIL`), or None."""
    return g.get("console_staff")


def signed_in_staff() -> StaffAccount:
    """The signed-in account, in a page behind `requires`, which lets no one else in."""
    staff = current_staff()
    if staff is None:
        raise RuntimeError("signed_in_staff() is for pages behind requires()")
    return staff


def requires(role: Role) -> Callable:
    """A console page for `role` and above: the sign-in page for whoever is not signed in, the
    password page until the one-time password is replaced, a 403 page for a lower role."""

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any):
            staff = current_staff()
            if staff is None:
                return to_sign_in()
            if staff.must_change_password:
                return redirect(url_for(CHANGE_PASSWORD))
            if not staff.role.covers(role):
                abort(403, f"This page needs the {role.value} role; you are signed in as {staff.role.value}.")
            return view(*args, **kwargs)

        return guarded

    return decorate


def may(role: str) -> bool:
    """Whether the signed-in account has `role` ("operator"...) or above: a page shows the forms
    of what it may do, and no others (a Jinja global; the views check again)."""
    staff = current_staff()
    return staff is not None and staff.role.covers(Role(role))


def to_sign_in() -> BaseResponse:
    """Send the browser to the sign-in page, to come back here after."""
    return redirect(url_for(SIGN_IN, next=request.path))


def csrf_field() -> Markup:
    """The hidden form field that lets a form of this console POST (a Jinja global)."""
    return Markup(f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(g.console_session.csrf)}">')


def start_session(account: StaffAccount) -> None:
    """Sign this browser in as `account` (after its password was checked)."""
    g.console_session = g.console_session.signed_in(account.email, account.session_generation, time.time())
    g.console_staff = account


def end_session() -> None:
    """Sign this browser out."""
    g.console_session = ConsoleSession.anonymous()
    g.console_staff = None


def _cookies() -> SessionCookies:
    return SessionCookies(current_app.config["SECRET_KEY"])


def _open_session():
    if request.endpoint == "console.static":
        return
    cookie = request.cookies.get(COOKIE)
    session = _cookies().load(cookie, time.time()) if cookie else None
    g.console_session = session or ConsoleSession.anonymous()
    g.console_staff = None
    if request.method == "POST" and not (session and hmac.compare_digest(request.form.get(CSRF_FIELD, "").encode(), session.csrf.encode())):
        abort(403, "This form has expired or did not come from this console. Go back, reload the page and try again.")
    if session and session.email:
        account = current_services().staff.get(session.email)
        if account and account.active and account.session_generation == session.generation:
            g.console_staff = account
        else:
            end_session()


def _renew_session(response: Response) -> Response:
    """Write the session back with this request as its last use: an idle session expires, a used one goes on."""
    session = g.get("console_session")
    if session is not None:
        response.set_cookie(
            COOKIE, _cookies().dump(session, time.time()), max_age=IDLE, path=url_for(HOME),
            httponly=True, samesite="Lax", secure=request.is_secure,
        )
    return response
