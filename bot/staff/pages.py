"""Hosted pages for end users: /opt-in and /opt-out (R1, R2, R7).

The opt-in page shows the exact consent text with an unticked, optional checkbox. A ticked box
records nothing yet (anyone can type anyone's number): it keeps a request with the text shown,
the page version, time, client address and user agent (bot.storage.web_opt_ins) and shows a
wa.me link and QR code that open WhatsApp with a confirmation message to the business; the
opt-in is recorded when that message arrives from the same number. The opt-out page records an
opt-out at once. Forms carry a CSRF token. Submissions are rate limited per client network
(an IPv6 /64 is one client) and, for opt-in requests, per number; an opt-out is limited per
client only, so that nobody's submissions can use up the budget that lets the owner opt out.
"""
from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path
from urllib.parse import quote

import redis
import segno
import sqlalchemy as sa
from flask import Blueprint, current_app, make_response, render_template, request
from markupsafe import Markup

from bot.client_network import client_network
from bot.domain.consent import Action, Channel, EventDraft, Scope
from bot.domain.identity import InvalidNumber, mask, normalize_wa_id
from bot.outbound.limiter import RateLimiter
from bot.services import current_services
from bot.staff import form_tokens
from bot.storage.ledger import SourceRefConflict, utc_now
from bot.storage.web_opt_ins import LIFETIME, confirmation_text

log = logging.getLogger(__name__)
bp = Blueprint("pages", __name__)

COOKIE = "form_token"
UNAVAILABLE = "We could not record this just now. Please try again in a minute."
RECORDED_BY = "page"


def consent_text() -> str:
    """The exact sentence a person agrees to on the opt-in page, naming the business."""
    return _app_wording()[0]


def page_version() -> str:
    """A digest of every page template and the consent text: the evidence says which wording was shown."""
    return _app_wording()[1]


def _app_wording() -> tuple[str, str]:
    folder = current_app.template_folder
    assert isinstance(folder, str), "create_app names the template folder"
    return _wording(folder, current_services().settings.business_name)


@functools.cache
def _wording(template_folder: str, business: str) -> tuple[str, str]:
    """(consent text, page version), read once per process: the files change only with a deploy."""
    folder = Path(template_folder) / "pages"
    text = (folder / "consent_text.txt").read_text(encoding="utf-8").strip().format(business=business)
    digest = hashlib.sha256(text.encode())
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return text, digest.hexdigest()[:12]


def _render(page: str, status: int = 200, **context):
    token = form_tokens.issue(current_app.config["SECRET_KEY"])
    body = render_template(
        f"pages/{page}.html", business=current_services().settings.business_name, consent_text=consent_text(),
        token=token, **context,
    )
    response = make_response(body, status)
    response.set_cookie(COOKIE, token, max_age=form_tokens.MAX_AGE, httponly=True, samesite="Strict", secure=request.is_secure)
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.route("/opt-in", methods=["GET", "POST"])
def opt_in():
    return _submit("opt_in") if request.method == "POST" else _render("opt_in")


@bp.route("/opt-out", methods=["GET", "POST"])
def opt_out():
    return _submit("opt_out") if request.method == "POST" else _render("opt_out")


def _submit(page: str):
    nonce = form_tokens.nonce_if_valid(current_app.config["SECRET_KEY"], request.form.get("token", ""), request.cookies.get(COOKIE))
    if nonce is None:
        return _render(page, 400, error="This form has expired or was not sent from this page. Please try again.")
    number = request.form.get("phone", "")
    try:
        wa_id = normalize_wa_id(number)  # people know their number, not their BSUID
    except InvalidNumber:
        return _render(page, 422, error="Please enter your WhatsApp number with its country code, for example +1 650 555 1234.", phone=number[:32])
    if page == "opt_in" and request.form.get("consent") != "yes":
        return _render(page, 200, notice="Nothing was recorded: you did not tick the box. That is fine — we will not message you on WhatsApp.")
    try:
        within_limits = _within_limits(page, wa_id)
    except redis.RedisError:
        if page == "opt_in":
            return _render(page, 503, error=UNAVAILABLE)
        log.warning("opt-out page: Redis does not answer; recording without the rate limit (R7: an opt-out is never refused)")
        within_limits = True
    if not within_limits:
        return _render(page, 429, error="Too many submissions. Please wait a few minutes and try again.")
    if page == "opt_in":
        return _request_opt_in(wa_id)
    try:
        current_services().ledger.append(_opt_out(wa_id, nonce))
    except SourceRefConflict:
        return _render(page, 400, error="This form was already used. Please try again.")
    except (sa.exc.OperationalError, sa.exc.InterfaceError):
        log.error("%s page: the database does not answer; nothing recorded", page)
        return _render(page, 503, error=UNAVAILABLE)
    log.info("%s recorded from the hosted page for %s", page, mask(wa_id))
    return _render(page, 200, done=True)


def _request_opt_in(wa_id: str):
    """Keep the request and show how to confirm it from WhatsApp."""
    try:
        code = current_services().web_opt_ins.request(wa_id, _evidence("opt_in"))
    except redis.RedisError:
        return _render("opt_in", 503, error=UNAVAILABLE)
    settings = current_services().settings
    message = confirmation_text(code, settings.business_name)
    link = f"https://wa.me/{settings.whatsapp_business_number}?text={quote(message)}" if settings.whatsapp_business_number else None
    qr = segno.make(link, error="m").svg_inline(scale=4, title="QR code: opens WhatsApp with the message") if link else None
    log.info("opt-in requested from the hosted page for %s; waiting for its confirmation from WhatsApp", mask(wa_id))
    return _render("opt_in", 200, pending=True, confirmation=message, link=link, qr=Markup(qr) if qr else None, minutes=LIFETIME // 60)


def _evidence(page: str) -> dict[str, str]:
    evidence = {
        "page": f"/{page.replace('_', '-')}",
        "page_version": page_version(),
        "ip": request.remote_addr or "",
        "user_agent": request.headers.get("User-Agent", "")[:512],
        "submitted_at": utc_now().isoformat(),
    }
    if page == "opt_in":
        evidence["consent_text_shown"] = consent_text()
    return evidence


def _opt_out(wa_id: str, nonce: str) -> EventDraft:
    """An opt-out from the page: recorded at once (R7)."""
    scope = Scope.MARKETING if request.form.get("scope") == "marketing" else Scope.ALL
    return EventDraft(
        identifier=wa_id, action=Action.OPT_OUT, channel=Channel.WEB, scope=scope, evidence=_evidence("opt_out"),
        source_ref=f"opt_out:{nonce}", recorded_by=RECORDED_BY,
    )


def _within_limits(page: str, wa_id: str) -> bool:
    """Per client network and, for opt-in requests, per number; shared by every web process
    through Redis. An opt-out is not limited per number: a stranger's submissions must never
    keep the number's owner from opting out."""
    limiter: RateLimiter = current_services().page_limiter
    budgets = [("client", client_network(request.remote_addr or ""))]
    if page == "opt_in":
        budgets.append(("number", wa_id))
    return all(limiter.reserve(f"pages:{page}:{kind}:{value}", max_wait=0).reserved for kind, value in budgets)
