"""Schemathesis against the app's own OpenAPI document: no 5xx, and every answer matches the document.

Hypothesis drives each operation's strategy directly: schemathesis' pytest loader for fixtures
(`schemathesis.pytest.from_fixture`) reads `Function._nodeid`, which pytest 9 no longer has.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from ctxbatch.config import Settings
from ctxbatch.io import ContextStore
from ctxbatch.service import create_app
from ctxbatch.service.security import TOKEN_VARIABLE

# schemathesis draws header values with `st.randoms()` in a way hypothesis now deprecates
# (schemathesis/specs/openapi/headers.py); the bulk route's Idempotency-Key header meets it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"
)

# Per operation and mode; all of them stay well under a minute on 2 cores.
MAX_EXAMPLES = 50
OPERATIONS = [
    ("POST", "/api/contexts/bulk"),
    ("GET", "/api/batches"),
    ("GET", "/api/batches/{batch_id}"),
    ("GET", "/api/batches/{batch_id}/results"),
    ("POST", "/api/batches/{batch_id}/cancel"),
    ("POST", "/api/batches/{batch_id}/retry"),
    ("GET", "/api/contexts/{context_id}"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches"),
    ("GET", "/v1/batches/{batch_id}"),
    ("POST", "/v1/batches/{batch_id}/cancel"),
    ("GET", "/v1/files/{file_id}"),
    ("DELETE", "/v1/files/{file_id}"),
]
# Only these have something to get wrong: a body or a typed parameter (a string path id has none).
NEGATABLE = [
    ("POST", "/api/contexts/bulk"),
    ("GET", "/api/batches"),
    ("GET", "/api/batches/{batch_id}/results"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches"),
]
CASES = [(*op, GenerationMode.POSITIVE) for op in OPERATIONS] + [(*op, GenerationMode.NEGATIVE) for op in NEGATABLE]


@pytest.mark.parametrize("method,path,mode", CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_the_api_keeps_to_its_openapi_document(
    method: str, path: str, mode: GenerationMode, store: ContextStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    # Some batches and a keyed context, so generated ids sometimes meet real ones.
    store.submit([{"payload": {"i": i}} for i in range(3)])
    store.submit([{"payload": {}, "key": "known"}])
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(store, Settings()))
    operation = schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def keeps_to_the_document(case: schemathesis.Case) -> None:
        # Data valid by the schema that the store still refuses is expected: JSON Schema cannot
        # say that keys are unique, that integers fit in 64 bits, or which cursors were handed out.
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    keeps_to_the_document()
