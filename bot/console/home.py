"""GET /console: who is signed in, with which role, and the way to each section."""
from __future__ import annotations

from flask import Blueprint

from bot.console.access import requires
from bot.console.rendering import render
from bot.domain.staff import Role

bp = Blueprint("home", __name__)


@bp.get("")
@requires(Role.VIEWER)
def home():
    return render("home")
