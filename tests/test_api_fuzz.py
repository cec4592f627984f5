"""Schema-based fuzzing of the unlearning API (schemathesis over real HTTP on loopback)."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

from fedforget.api.server import live_api
from fedforget.config import FederationConfig
from fedforget.federated.federation import build_strategy
from fedforget.methods import method_class, method_names

MAX_EXAMPLES = 40  # per operation and mode: about 20 s in all on 2 cores


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFORGET_API_TOKEN", "fuzz-token")
    config = FederationConfig(
        num_partitions=3,
        unlearn_at_round=0,
        api_enabled=True,
        state_dir=str(tmp_path),
        progress=False,
    )
    strategy = build_strategy(config)
    with live_api(config, strategy) as server:
        yield server.url, strategy


def test_api_conforms_to_its_openapi_schema(served):
    """Generated calls (valid and invalid) never cause a 5xx or an undocumented answer.

    Only 202 answers may queue anything, never a client outside 0..2, and only
    registered methods with options among their settings.
    """
    url, strategy = served
    auth = {"Authorization": "Bearer fuzz-token"}
    schema = schemathesis.openapi.from_dict(httpx.get(f"{url}/openapi.json", headers=auth).json())
    accepted: set[str] = set()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 4
    for operation in operations:
        for mode in GenerationMode:

            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case) -> None:
                response = case.call(base_url=url, headers=auth)
                assert response.status_code < 500, response.text
                case.validate_response(response, checks=_checks())
                if response.status_code == 202:
                    accepted.add(response.json()["request_id"])

            call()
    queued = strategy.requests.all()
    assert {r.request_id for r in queued} == accepted
    assert all(set(r.client_ids) <= {"0", "1", "2"} for r in queued)
    assert all(r.method in method_names() for r in queued)
    assert all(set(r.options) <= set(method_class(r.method).defaults) for r in queued)


def _checks():
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    return [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
