"""gunicorn's access log with secrets and people masked: staff API paths carry phone numbers
(/api/v1/consents/<wa_id>) and Meta's handshake carries the verify token in its query."""
from __future__ import annotations

import re

from gunicorn.glogging import Logger

from bot.domain.identity import mask_numbers

_SIZES_AND_TIMES = {"b", "B", "T", "D", "M", "L"}  # numbers that are not phone numbers
_VERIFY_TOKEN = re.compile(r"(hub(?:\.|%2E)verify_token=)[^&\s]*", re.IGNORECASE)


def masked(text: str) -> str:
    """A request line, path or query as the log may show it."""
    return mask_numbers(_VERIFY_TOKEN.sub(r"\1***", text))


class MaskedAccessLogger(Logger):
    def atoms(self, resp, req, environ, request_time) -> dict:
        """Every text atom (request line, path, query, headers, environ values) masked."""
        atoms = super().atoms(resp, req, environ, request_time)
        return {key: masked(value) if isinstance(value, str) and key not in _SIZES_AND_TIMES else value for key, value in atoms.items()}
