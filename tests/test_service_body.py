"""The bulk body over HTTP: declared as JSON or NDJSON, a BOM, MongoDB's depth limit, a client gone mid-body."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest

from ctxbatch.config import Settings
from ctxbatch.io import ContextStore
from ctxbatch.service import create_app
from ctxbatch.service.security import TOKEN_VARIABLE

BULK = "/api/contexts/bulk"
BODY = json.dumps([{"payload": {"n": 1}}, {"payload": {"n": 2}}]).encode()


@pytest.mark.parametrize("declared", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_a_body_not_declared_json_is_refused_with_415(
    api: httpx.Client, store: ContextStore, declared: str | None
) -> None:
    headers = {"Content-Type": declared} if declared else {}
    answer = api.post(BULK, content=BODY, headers=headers)
    assert answer.status_code == 415
    assert "application/json" in answer.json()["error"]
    assert store.contexts.count_documents({}) == 0


def test_json_with_a_charset_is_accepted(api: httpx.Client) -> None:
    answer = api.post(BULK, content=BODY, headers={"Content-Type": "application/json; charset=utf-8"})
    assert answer.status_code == 202
    assert answer.json()["count"] == 2


def test_an_ndjson_body_is_accepted(api: httpx.Client, store: ContextStore) -> None:
    body = b'{"payload": {"n": 1}}\n\n{"payload": {"n": 2}, "priority": 3}\n'
    answer = api.post(BULK, content=body, headers={"Content-Type": "application/x-ndjson"})
    assert answer.status_code == 202, answer.text
    assert answer.json()["count"] == 2
    assert sorted(d["priority"] for d in store.contexts.find({})) == [3, 50]


def test_a_bad_ndjson_line_is_refused_naming_it(api: httpx.Client, store: ContextStore) -> None:
    body = b'{"payload": {"n": 1}}\n{"payload": \n'
    answer = api.post(BULK, content=body, headers={"Content-Type": "application/x-ndjson"})
    assert answer.status_code == 400
    assert "line 2" in answer.json()["error"]
    assert store.contexts.count_documents({}) == 0


@pytest.mark.parametrize("declared", ["application/json", "application/x-ndjson"])
def test_a_utf8_bom_is_accepted(api: httpx.Client, declared: str) -> None:
    body = b"\xef\xbb\xbf" + (BODY if declared == "application/json" else b'{"payload": {"n": 1}}\n')
    answer = api.post(BULK, content=body, headers={"Content-Type": declared})
    assert answer.status_code == 202, answer.text


@pytest.mark.parametrize("levels", [99, 500, 5000])
def test_nesting_past_mongodbs_limit_is_a_4xx(api: httpx.Client, store: ContextStore, levels: int) -> None:
    body = '[{"payload": ' + '{"a": ' * levels + "{}" + "}" * (levels + 1) + "]"
    answer = api.post(BULK, content=body.encode(), headers={"Content-Type": "application/json"})
    assert 400 <= answer.status_code < 500
    assert store.contexts.count_documents({}) == 0


def test_a_client_gone_mid_body_is_one_log_line(
    store: ContextStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    app = create_app(store, Settings())
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'[{"payload": {"n"', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": BULK,
        "raw_path": BULK.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    with caplog.at_level(logging.DEBUG):
        asyncio.run(app(scope, receive, send))
    lines = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(lines) == 1
    assert not any(r.exc_info for r in caplog.records)
    assert store.contexts.count_documents({}) == 0
