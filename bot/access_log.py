"""gunicorn's access log with phone numbers masked: staff API paths carry them (/api/v1/consents/<wa_id>)."""
from __future__ import annotations

from gunicorn.glogging import Logger

from bot.domain.identity import mask_numbers

_SIZES_AND_TIMES = {"b", "B", "T", "D", "M", "L"}  # numbers that are not phone numbers


class MaskedAccessLogger(Logger):
    def atoms(self, resp, req, environ, request_time) -> dict:
        """Every text atom (request line, path, query, headers, environ values) with numbers masked."""
        atoms = super().atoms(resp, req, environ, request_time)
        return {
            key: mask_numbers(value) if isinstance(value, str) and key not in _SIZES_AND_TIMES else value
            for key, value in atoms.items()
        }
