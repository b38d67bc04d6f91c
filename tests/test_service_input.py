"""Bad input to the HTTP API: each answer has its status, a JSON error, and the database is unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from conftest import http_client

from ctxbatch.config import Settings
from ctxbatch.io import ContextStore
from ctxbatch.service import create_app
from ctxbatch.service.security import TOKEN_VARIABLE

TOKEN = "s3cret-token"
MB = 1024 * 1024
ODD_ID = '{"$ne": 1}'  # sent as the path segment, percent-encoded


def _app(store: ContextStore, monkeypatch: pytest.MonkeyPatch, **api: Any) -> AbstractContextManager[httpx.Client]:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    return http_client(create_app(store, Settings.model_validate({"api": api})))


@pytest.fixture
def secured(store: ContextStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    with _app(store, monkeypatch, token=TOKEN) as opened:
        yield opened


@pytest.fixture
def existing(store: ContextStore) -> str:
    """A batch already stored, so 'unchanged' means more than 'empty'."""
    return store.submit([{"payload": {"kept": True}, "key": "taken"}])


def _snapshot(store: ContextStore) -> tuple[list[Any], list[Any]]:
    contexts = sorted((d["_id"], d["status"]) for d in store.contexts.find({}, {"status": 1}))
    batches = sorted(d["_id"] for d in store.batches.find({}, {"_id": 1}))
    return contexts, batches


def _ok(n: int) -> list[dict[str, Any]]:
    return [{"payload": {"i": i}} for i in range(n)]


def _chunked(size: int) -> Iterator[bytes]:
    chunk = b" " * MB
    for _ in range(size // MB):
        yield chunk


Post = Callable[[httpx.Client], Any]
BULK = "/api/contexts/bulk"
JSON_BODY = {"Content-Type": "application/json"}


def _json(body: Any) -> Post:
    return lambda client: client.post(BULK, json=body)


def _raw(body: bytes) -> Post:
    return lambda client: client.post(BULK, content=body, headers=JSON_BODY)


# name -> (how to send it, status, the (index, field) pairs the problems must name, or None)
BAD_BODIES: dict[str, tuple[Post, int, list[tuple[int | None, str | None]] | None]] = {
    "empty array": (_json([]), 422, [(None, None)]),
    "empty contexts": (_json({"contexts": []}), 422, [(None, None)]),
    "priority 500": (_json([{"payload": {}, "priority": 500}]), 422, [(0, "priority")]),
    "priority -1": (_json([{"payload": {}, "priority": -1}]), 422, [(0, "priority")]),
    "priority high": (_json([{"payload": {}, "priority": "high"}]), 422, [(0, "priority")]),
    "priority true": (_json([{"payload": {}, "priority": True}]), 422, [(0, "priority")]),
    "payload a string": (_json([{"payload": "text"}]), 422, [(0, "payload")]),
    "payload missing": (_json([{"priority": 1}]), 422, [(0, "payload")]),
    "unknown context field": (_json([{"payload": {}, "prio": 1}]), 422, [(0, "prio")]),
    "unknown top-level field": (_json({"contexts": _ok(1), "priority": 1}), 422, [(None, "priority")]),
    "contexts missing": (_json({"name": "x"}), 422, [(None, "contexts")]),
    "contexts not an array": (_json({"contexts": {}}), 422, [(None, "contexts")]),
    "name not a string": (_json({"contexts": _ok(1), "name": 7}), 422, [(None, "name")]),
    "body a string": (_json("contexts"), 422, [(None, None)]),
    "context not an object": (_json([1]), 422, [(0, None)]),
    "one bad among good": (_json([*_ok(5), {"payload": []}, *_ok(5)]), 422, [(5, "payload")]),
    "key repeated": (
        _json([{"payload": {}, "key": "a"}, {"payload": {}, "key": "a"}]),
        422,
        [(1, "key")],
    ),
    "key empty": (_json([{"payload": {}, "key": ""}]), 422, [(0, "key")]),
    "key already stored": (_json([*_ok(2), {"payload": {}, "key": "taken"}]), 409, [(2, "key")]),
    "lone surrogate in payload": (_raw(b'[{"payload": {"t": "\\ud800"}}]'), 422, [(0, "payload")]),
    "lone surrogate in key": (_raw(b'[{"payload": {}, "key": "\\udfff"}]'), 422, [(0, "key")]),
    "integer beyond 64 bits": (_json([{"payload": {"n": 2**70}}]), 422, [(0, "payload.n")]),
    "NUL in a payload key": (_json([{"payload": {"a\x00b": 1}}]), 422, [(0, "payload")]),
    "10,001 contexts": (_json(_ok(10_001)), 413, None),
    # Made when sent, not at import: 70 MB each.
    "70 MB body": (lambda c: c.post(BULK, content=b" " * (70 * MB), headers=JSON_BODY), 413, None),
    "70 MB chunked body": (lambda c: c.post(BULK, content=_chunked(70 * MB), headers=JSON_BODY), 413, None),
    "broken JSON": (_raw(b'[{"payload": {'), 400, None),
    "empty body": (_raw(b""), 400, None),
    "not UTF-8": (_raw(b'[{"payload": {"t": "\xff"}}]'), 400, None),
    "NaN": (_raw(b'[{"payload": {"x": NaN}}]'), 400, None),
    "nested too deeply": (_raw(b"[" * 100_000 + b"]" * 100_000), 400, None),
}

ODD_PATHS: dict[str, tuple[Post, int]] = {
    "status": (lambda c: c.get("/api/batches/" + ODD_ID), 404),
    "results": (lambda c: c.get("/api/batches/" + ODD_ID + "/results"), 404),
    "results as JSON Lines": (
        lambda c: c.get("/api/batches/" + ODD_ID + "/results", headers={"Accept": "application/x-ndjson"}),
        404,
    ),
    "cancel": (lambda c: c.post("/api/batches/" + ODD_ID + "/cancel"), 404),
    "retry": (lambda c: c.post("/api/batches/" + ODD_ID + "/retry"), 404),
    "context": (lambda c: c.get("/api/contexts/" + ODD_ID), 404),
    "regex id": (lambda c: c.get("/api/batches/.*"), 404),
    "unknown route": (lambda c: c.get("/api/nothing-here"), 404),
    "limit 0": (lambda c: c.get("/api/batches?limit=0"), 422),
    "limit not a number": (lambda c: c.get("/api/batches?limit=many"), 422),
    "unknown status": (lambda c: c.get("/api/batches?status=done"), 422),
}


def _assert_refused(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert isinstance(body["error"], str) and body["error"]
    return body


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_a_bad_body_is_refused_and_nothing_is_stored(
    name: str, api: httpx.Client, store: ContextStore, existing: str
) -> None:
    send, status, where = BAD_BODIES[name]
    before = _snapshot(store)

    body = _assert_refused(send(api), status)

    if where is not None:
        assert [(p["index"], p["field"]) for p in body["problems"]] == where
    assert _snapshot(store) == before


@pytest.mark.parametrize("name", list(ODD_PATHS))
def test_an_odd_path_or_parameter_is_refused_and_changes_nothing(
    name: str, api: httpx.Client, store: ContextStore, existing: str
) -> None:
    send, status = ODD_PATHS[name]
    before = _snapshot(store)

    _assert_refused(send(api), status)

    assert _snapshot(store) == before


def test_every_problem_is_listed_up_to_twenty(api: httpx.Client) -> None:
    contexts = [{"payload": {}, "priority": 500 + i} for i in range(25)]

    body = _assert_refused(api.post("/api/contexts/bulk", json=contexts), 422)

    assert [(p["index"], p["field"]) for p in body["problems"]] == [(i, "priority") for i in range(20)]


def test_a_bad_cursor_is_refused(api: httpx.Client, existing: str) -> None:
    body = _assert_refused(api.get(f"/api/batches/{existing}/results?cursor=not-a-cursor"), 422)

    assert body["problems"][0]["field"] == "cursor"


def test_the_limits_come_from_the_settings(store: ContextStore, monkeypatch: pytest.MonkeyPatch) -> None:
    with _app(store, monkeypatch, max_contexts_per_request=2, max_body_bytes=100) as client:
        too_many = client.post("/api/contexts/bulk", json=_ok(3))
        too_big = client.post("/api/contexts/bulk", json=[{"payload": {"t": "x" * 100}}])

    _assert_refused(too_many, 413)
    _assert_refused(too_big, 413)


# -- the token --------------------------------------------------------------------------------

ROUTES = [
    ("POST", "/api/contexts/bulk"),
    ("GET", "/api/batches"),
    ("GET", "/api/batches/b"),
    ("GET", "/api/batches/b/results"),
    ("POST", "/api/batches/b/cancel"),
    ("POST", "/api/batches/b/retry"),
    ("GET", "/api/contexts/c"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/no/such/route"),
]
BAD_HEADERS = {
    "missing": {},
    "wrong": {"Authorization": "Bearer wrong-token"},
    "not bearer": {"Authorization": f"Basic {TOKEN}"},
    "empty": {"Authorization": "Bearer"},  # on the wire, "Bearer " loses its trailing space
}


@pytest.mark.parametrize("method,path", ROUTES)
@pytest.mark.parametrize("headers", list(BAD_HEADERS))
def test_every_route_but_healthz_needs_the_token(
    method: str, path: str, headers: str, secured: httpx.Client, store: ContextStore, existing: str
) -> None:
    before = _snapshot(store)

    answer = secured.request(method, path, headers=BAD_HEADERS[headers], json=_ok(1))

    _assert_refused(answer, 401)
    assert answer.headers["www-authenticate"] == "Bearer"
    assert _snapshot(store) == before


def test_healthz_needs_no_token(secured: httpx.Client) -> None:
    assert secured.get("/healthz").status_code == 200


def test_the_right_token_is_let_through(secured: httpx.Client) -> None:
    answer = secured.post("/api/contexts/bulk", json=_ok(2), headers={"Authorization": f"Bearer {TOKEN}"})

    assert answer.status_code == 202


def test_the_token_may_come_from_the_environment(store: ContextStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, "from-env")
    with http_client(create_app(store, Settings())) as client:
        refused = client.get("/api/batches")
        allowed = client.get("/api/batches", headers={"Authorization": "Bearer from-env"})

    assert (refused.status_code, allowed.status_code) == (401, 200)


def test_the_openapi_document_declares_the_bearer_scheme(secured: httpx.Client) -> None:
    document = secured.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()

    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert document["paths"]["/api/batches"]["get"]["security"] == [{"bearer": []}]
    assert document["paths"]["/healthz"]["get"]["security"] == []


def test_a_refused_body_leaves_no_trace_in_json_either(api: httpx.Client, store: ContextStore) -> None:
    # Given a valid body but for its last context
    contexts = [*_ok(3), {"payload": {}, "priority": 101}]

    api.post("/api/contexts/bulk", content=json.dumps({"contexts": contexts, "name": "n"}).encode(), headers=JSON_BODY)

    assert _snapshot(store) == ([], [])
