"""schemathesis against the served OpenAPI document: generated requests, valid and invalid,
never give a server error and every answer matches the document. Budget bounded for CI.

Not checked: that every schema-valid request is accepted. Consent rules go beyond a schema
(an opt-in needs its text and evidence, a number needs a country code, a date cannot be in
the future), and those refusals, 422 with the field, are tested in test_staff_api.

(schemathesis's own pytest plugin does not run under this pytest, so each operation's
strategy is driven by hypothesis directly.)
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from bot import create_app
from bot.staff.openapi import openapi_document
from tests.conftest import ADMIN_TOKEN, app_config
from tests.local_services import migrated

OPERATIONS = [
    (method.upper(), path) for path, operations in openapi_document()["paths"].items() for method in operations
]


@pytest.mark.parametrize("method,path", OPERATIONS)
def test_the_staff_api_keeps_its_openapi_document(tmp_path, redis_url, graph, method, path):
    app = create_app(app_config(migrated(f"sqlite:///{tmp_path / 'ledger.db'}"), redis_url, graph))
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operation = schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, excluded_checks=[positive_data_acceptance])

    check()
