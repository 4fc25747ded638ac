"""Schemathesis against the app's own OpenAPI document: for every operation, generated
requests never get a 5xx, and every response matches what the document promises; with API keys
on, every operation that declares a key scheme refuses a request without a valid key
(``ignored_auth``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import ignored_auth

from dspy_serve import create_app
from tests.support.fake_lm import FakeLM
from tests.support.servers import ServerThread, serving
from tests.support.settings import PROGRAMS, fake_settings

KEY = "sk-fuzz-serve-key"


@pytest.fixture(scope="module", params=["open", "keys"])
def served(request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    keys = {"api_keys": [f"fuzz:{KEY}"]} if request.param == "keys" else {}
    with FakeLM() as fake, pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", "sk-fuzz")
        app = create_app(
            fake_settings(
                fake,
                programs=[f"{PROGRAMS / 'serving.py'}:qa", f"{PROGRAMS / 'serving.py'}:kitchen"],
                allow_models=["openai/fake-small"],
                batch_max_items=4,
                max_input_chars=2_000,
                **keys,
            )
        )
        with serving(app) as server:
            yield server


def test_every_operation_keeps_its_contract(served: ServerThread) -> None:
    schema = schemathesis.openapi.from_url(served.base_url + "/openapi.json")
    keys_on = "securitySchemes" in schema.raw_schema.get("components", {})
    headers = {"Authorization": f"Bearer {KEY}"} if keys_on else None
    # Every response is checked against the 200 schema (schemathesis' response_schema_conformance):
    # the typed one, not the untyped object it was published as since traces and prompts (#21).
    paths = schema.raw_schema["paths"]
    answer = paths["/qa/invoke"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/QaInvokeResponse"}
    typed = schema.raw_schema["components"]["schemas"]["QaInvokeResponse"]
    assert typed["properties"]["outputs"] == {"$ref": "#/components/schemas/QaOutputs"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 11  # invoke, stream, batch per program; 2 discovery, 2 health, metrics
    protected = [op for op in operations if op.definition.raw.get("security")]
    assert len(protected) == (8 if keys_on else 0)  # all but the two health checks and metrics

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def keeps_contract(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, additional_checks=[ignored_auth], timeout=30)

        keeps_contract()
