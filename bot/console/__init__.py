"""The staff console at /console (SPEC §8): HTML pages for staff, behind sign-in, that work on a phone.

Each part of the console is a blueprint inside this one, which opens the session and checks
CSRF before every request (bot.console.access) and secures every answer (bot.console.rendering).
A page declares the role it needs with `requires(Role.X)` and records what its staff member
causes as `current_staff().recorded_by`.
"""
from __future__ import annotations

from flask import Blueprint

from bot.console import audit, campaigns, catalog, health, home, inbox, new_campaign, people, review, sign_in
from bot.console.access import guard
from bot.console.rendering import serve_pages

bp = Blueprint("console", __name__, url_prefix="/console", static_folder="static")
guard(bp)
serve_pages(bp)
bp.register_blueprint(sign_in.bp)
bp.register_blueprint(home.bp)
bp.register_blueprint(inbox.bp)
bp.register_blueprint(people.bp)
bp.register_blueprint(review.bp)
bp.register_blueprint(catalog.bp)
bp.register_blueprint(health.bp)
bp.register_blueprint(audit.bp)
bp.register_blueprint(new_campaign.bp)
bp.register_blueprint(campaigns.bp)
