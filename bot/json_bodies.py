"""JSON from outside (webhook bodies, staff requests, CSV cells), read with a bound on nesting.

A document nested hundreds deep can parse and then break whatever walks it recursively later
(encoding it for the ledger or for a kept row): a 500 far from its cause. Nothing we read needs
more than a few levels (Meta's webhooks about eight), so deeper is refused where it comes in.
"""
from __future__ import annotations

import json

MAX_DEPTH = 64


class UnreadableJson(ValueError):
    """Not JSON, or nested deeper than MAX_DEPTH; the message is the one-line reason."""


def loads(raw: str | bytes) -> object:
    """Parse `raw`; raise UnreadableJson when it is not JSON or is nested too deeply."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise UnreadableJson(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as error:
        raise UnreadableJson("not JSON") from error
    _check_depth(value)
    return value


def _check_depth(value: object) -> None:
    pending = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= MAX_DEPTH:
                    raise UnreadableJson(f"nested deeper than {MAX_DEPTH} levels")
                pending.append((child, depth + 1))
