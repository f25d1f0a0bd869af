"""The staff API's OpenAPI 3.1 document, kept as YAML beside the code it describes."""
from __future__ import annotations

import functools
from pathlib import Path

import yaml


@functools.cache
def openapi_document() -> dict:
    return yaml.safe_load((Path(__file__).with_name("openapi.yml")).read_text(encoding="utf-8"))
