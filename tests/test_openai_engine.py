"""The built-in `openai` engine against a real OpenAI-compatible server (tests/openai_server.py):
what it sends and where, what it stores, what each kind of answer does to a context, and the usage
it reports for the shared token budget."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import small_run
from distributed import Client
from openai_server import Script, serve

from ctxbatch import ConfigError, ContextStore, FailNow, Pipeline, estimate_tokens, load_config
from ctxbatch.engines.openai import endpoint
from ctxbatch.io.schema import RESPONSE_BYTES, error_record
from ctxbatch.io.usage import usage_of
from ctxbatch.pipeline.engine import Engine, configured, resolve_engine
from ctxbatch.pipeline.isolate import PartitionOutcome, run_partition
from ctxbatch.pipeline.partition import as_frame
from ctxbatch.pipeline.tokens import used_tokens

CLUSTER = {"n_workers": 2}
KEY_VARIABLE = "CTXBATCH_TEST_OPENAI_KEY"


def chat(text: str, **body: Any) -> dict[str, Any]:
    """A line of an OpenAI batch without its custom_id: a context's payload."""
    messages = [{"role": "system", "content": "Echo."}, {"role": "user", "content": text}]
    body = {"model": "gpt-4o-mini", "messages": messages, **body}
    return {"method": "POST", "url": "/v1/chat/completions", "body": body}


def openai_config(base_url: str, **retry: Any) -> dict[str, Any]:
    """A small run of the openai engine on `base_url`, its key read from KEY_VARIABLE."""
    settings = small_run(retry={"context_retries": 1, **retry})
    settings["openai"] = {"base_url": base_url, "api_key": f"${{{KEY_VARIABLE}}}", "timeout_seconds": 10}
    return settings


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_VARIABLE, "sk-test-123")
    return "sk-test-123"


def run_by_hand(engine: Any, payloads: list[dict[str, Any]]) -> PartitionOutcome:
    """The engine over one partition of these payloads as a notebook runs it: no worker, no session kept."""
    frame = as_frame([{"_id": f"c{i}", "payload": p, "priority": 0, "attempts": 1} for i, p in enumerate(payloads)])
    return run_partition(engine, frame, concurrency=4)


# -- real runs ----------------------------------------------------------------------------


def test_each_line_is_stored_as_status_request_id_and_body(store: ContextStore, client: Client, key: str) -> None:
    script = Script(latency=0.01)
    with serve(script) as base_url:
        batch = store.submit([{"payload": chat(f"line {i}")} for i in range(30)])
        report = Pipeline("openai", openai_config(base_url), store, client).run(until_empty=True)
    assert (report.completed, report.failed) == (30, 0)
    for doc in store.contexts.find({"batch_id": batch}):
        result = doc["result"]
        # Exactly the response of a line of OpenAI's batch output
        assert set(result) == {"status_code", "request_id", "body"}
        assert result["status_code"] == 200
        # The answer to this line (the server echoes the last message)
        assert result["body"]["choices"][0]["message"]["content"] == doc["payload"]["body"]["messages"][-1]["content"]
        assert result["body"]["usage"]["total_tokens"] > 0
    # And each request id is the x-request-id the server sent with that answer, once each
    stored = [d["result"]["request_id"] for d in store.contexts.find({"batch_id": batch})]
    assert sorted(stored) == sorted(script.request_ids)


def test_the_body_goes_to_the_lines_path_under_base_url_with_the_key_as_bearer(
    store: ContextStore, client: Client, key: str
) -> None:
    # Given lines for four endpoints, and a base URL that ends at /v1 as the SDK's does
    lines = [
        chat("hello"),
        {"method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": "once upon"}},
        {"method": "POST", "url": "/v1/embeddings", "body": {"model": "e", "input": ["a", "b"]}},
        {"method": "POST", "url": "/v1/responses", "body": {"model": "m", "input": "hi"}},
    ]
    script = Script()
    with serve(script) as base_url:
        assert base_url.endswith("/v1")
        store.submit([{"payload": line} for line in lines])
        report = Pipeline("openai", openai_config(base_url), store, client).run(until_empty=True)
    assert report.completed == 4
    # Then each went to its own path once (the line's /v1 not doubled), with the key from ${VAR} as a bearer
    assert script.paths == {f"/v1/{p}": 1 for p in ("chat/completions", "completions", "embeddings", "responses")}
    assert script.authorizations == {f"Bearer {key}": 4}


def test_a_bad_request_fails_at_once_keeping_the_response(store: ContextStore, client: Client, key: str) -> None:
    # Given one line the server refuses (400), and two retries per context
    script = Script()
    with serve(script) as base_url:
        batch = store.submit([{"payload": chat(text)} for text in ("fine", "BAD-REQUEST here", "also fine")])
        report = Pipeline("openai", openai_config(base_url, context_retries=2), store, client).run(until_empty=True)
    assert (report.completed, report.failed, report.retried) == (2, 1, 0)
    # Then it failed on its first try, with the status in the message and the whole response kept
    (bad,) = store.contexts.find({"batch_id": batch, "status": "failed"})
    assert (bad["attempts"], bad["error"]["type"]) == (1, "FailNow")
    assert "HTTP 400" in bad["error"]["message"]
    response = bad["error"]["response"]
    assert response["status_code"] == 400
    assert response["request_id"] in script.request_ids
    assert response["body"] == {
        "error": {
            "message": "the request holds BAD-REQUEST",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert script.statuses[400] == 1


def test_a_server_error_is_retried_then_failed_keeping_the_last_response(
    store: ContextStore, client: Client, key: str
) -> None:
    # Given one line the server always answers 500, and one retry per context
    script = Script()
    with serve(script) as base_url:
        batch = store.submit([{"payload": chat(text)} for text in ("fine", "SERVER-ERROR please", "also fine")])
        report = Pipeline("openai", openai_config(base_url), store, client).run(until_empty=True)
    assert (report.completed, report.failed) == (2, 1)
    # Then it was tried twice, and failed with the second answer kept (the last call the server saw)
    (bad,) = store.contexts.find({"batch_id": batch, "status": "failed"})
    assert (bad["attempts"], bad["error"]["type"]) == (2, "ServiceError")
    assert script.statuses[500] == 2
    response = bad["error"]["response"]
    assert (response["status_code"], response["request_id"]) == (500, script.request_ids[-1])
    assert response["body"]["error"]["type"] == "server_error"


def test_calls_beyond_the_servers_capacity_are_deferred_and_none_fails(
    store: ContextStore, client: Client, key: str
) -> None:
    # Given a server that holds 4 calls at once and answers 429 (Retry-After: 0.1) beyond that,
    # and two workers sending up to 16 calls each
    script = Script(latency=0.2, capacity=4, retry_after="0.1")
    with serve(script) as base_url:
        settings = openai_config(base_url)
        settings["worker"]["engine_concurrency"] = 16
        batch = store.submit([{"payload": chat(f"line {i}")} for i in range(40)])
        report = Pipeline("openai", settings, store, client).run(until_empty=True)
    # Then some calls were turned away, and every context still completed, its retries unspent
    assert script.turned_away > 0
    assert (report.completed, report.failed) == (40, 0)
    docs = list(store.contexts.find({"batch_id": batch}))
    assert {d["attempts"] for d in docs} == {1}
    assert sum(d.get("deferrals", 0) for d in docs) > 0
    assert script.most_inside <= 4


def test_a_payload_that_is_no_openai_request_fails_at_once_without_a_call(
    store: ContextStore, client: Client, key: str
) -> None:
    payloads = [
        {"text": "hi"},
        {"url": "chat/completions", "body": {"model": "m"}},  # no leading slash
        {"url": "/v1/chat/completions", "body": "hi"},
        {"method": "GET", "url": "/v1/models", "body": {}},
        chat("the one good line"),
    ]
    script = Script()
    with serve(script) as base_url:
        batch = store.submit([{"payload": p} for p in payloads])
        report = Pipeline("openai", openai_config(base_url, context_retries=2), store, client).run(until_empty=True)
    assert (report.completed, report.failed, report.retried) == (1, 4, 0)
    failed = sorted(store.contexts.find({"batch_id": batch, "status": "failed"}), key=lambda d: d["sort_id"])
    assert {(d["attempts"], d["error"]["type"]) for d in failed} == {(1, "FailNow")}
    messages = [d["error"]["message"] for d in failed]
    assert all("the payload is not an OpenAI batch request (needs url and body)" in m for m in messages[:3])
    assert '{"text": "hi"}' in messages[0]
    assert "'GET'" in messages[3] and "POST" in messages[3]
    # And only the good line reached the server
    assert script.calls == 1


def test_a_key_naming_a_missing_variable_is_refused_before_the_run(store: ContextStore) -> None:
    settings = openai_config("http://127.0.0.1:9/v1")
    settings["openai"]["api_key"] = "${CTXBATCH_NOT_SET_ANYWHERE}"
    with pytest.raises(ConfigError, match=r"openai.api_key: .*CTXBATCH_NOT_SET_ANYWHERE"):
        Pipeline("openai", settings, store)


def test_a_base_url_that_is_no_url_is_refused_naming_where_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"openai.base_url: must be an http:// or https:// URL"):
        load_config({"openai": {"base_url": "127.0.0.1:8000/v1"}})
    monkeypatch.setenv("OPENAI_BASE_URL", "127.0.0.1:8000/v1")
    with pytest.raises(ConfigError, match=r"openai.base_url: \$OPENAI_BASE_URL is '127.0.0.1:8000/v1'"):
        configured(resolve_engine("openai"), load_config({}))


# -- the engine alone, as a notebook runs it ----------------------------------------------


def test_unset_base_url_and_key_are_read_from_openais_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given OPENAI_BASE_URL naming the server, and no OPENAI_API_KEY
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    script = Script()
    with serve(script) as base_url:
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        engine = configured(resolve_engine("openai"), load_config({}))
        outcome = run_by_hand(engine, [chat(f"line {i}") for i in range(6)])
    # Then the calls went there, with no Authorization header at all
    assert len(outcome.results) == 6
    assert script.authorizations == {None: 6}


def test_the_default_key_is_read_on_the_worker_and_never_travels_with_the_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given OPENAI_API_KEY set where the run is configured and where it runs
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-shipped")
    script = Script()
    with serve(script) as base_url:
        engine = configured(resolve_engine("openai"), load_config({"openai": {"base_url": base_url}}))
        # When the engine is shipped to a worker as Dask ships it
        shipped = pickle.dumps(engine.fn)
        outcome = run_by_hand(Engine(pickle.loads(shipped), "async", "openai"), [chat("hi")])
    # Then the key itself was not in what was shipped, and was sent all the same
    assert b"sk-never-shipped" not in shipped
    assert len(outcome.results) == 1
    assert script.authorizations == {"Bearer sk-never-shipped": 1}


def test_a_call_past_the_timeout_is_a_failure_to_retry() -> None:
    # Given a server that takes ten times the engine's timeout to answer
    script = Script(latency=0.5)
    with serve(script) as base_url:
        section = {"base_url": base_url, "api_key": "", "timeout_seconds": 0.05}
        engine = configured(resolve_engine("openai"), load_config({"openai": section}))
        outcome = run_by_hand(engine, [chat("slow")])
    (failure,) = outcome.failures.values()
    assert (failure.error["type"], failure.final, failure.deferred) == ("ServiceError", False, False)
    assert "within 0.05 s" in failure.error["message"]


def test_the_server_runs_as_a_process_for_benchmarks() -> None:
    # Given the server started as a benchmark starts it
    script_path = Path(__file__).with_name("openai_server.py")
    command = [sys.executable, str(script_path), "--port", "0", "--latency", "0.01", "--capacity", "8"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1"), base_url
        engine = configured(resolve_engine("openai"), load_config({"openai": {"base_url": base_url, "api_key": "k"}}))
        outcome = run_by_hand(engine, [chat(f"line {i}") for i in range(5)])
        # When it is told to stop
        process.send_signal(signal.SIGTERM)
        said, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    # Then it answered the calls, and said what it saw as it stopped
    assert len(outcome.results) == 5
    assert process.returncode == 0
    stats = json.loads(said.strip().splitlines()[-1])
    assert (stats["calls"], stats["paths"]) == (5, {"/v1/chat/completions": 5})


# -- the parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "path", "url"),
    [
        ("http://host:8000/v1", "/v1/chat/completions", "http://host:8000/v1/chat/completions"),
        ("http://host:8000/v1/", "/v1/embeddings", "http://host:8000/v1/embeddings"),
        ("https://gateway.example/openai/v1", "/v1/responses", "https://gateway.example/openai/v1/responses"),
        ("http://host:8000/v1", "/chat/completions", "http://host:8000/v1/chat/completions"),
        ("http://host:8000/v1", "/v1beta/models", "http://host:8000/v1/v1beta/models"),
    ],
)
def test_a_lines_url_is_joined_to_base_url_as_the_sdk_joins_them(base_url: str, path: str, url: str) -> None:
    assert endpoint(base_url, path) == url


def test_the_token_estimate_is_that_of_the_body() -> None:
    engine = resolve_engine("openai").fn
    line = chat("x" * 40, max_tokens=100)
    # 100 tokens of answer, and the messages' 45 characters / 4, rounded up
    assert engine.tokens(line) == estimate_tokens(line["body"]) == 112


def test_usage_is_read_from_the_engines_result_for_each_endpoint() -> None:
    def result(usage: dict[str, int]) -> dict[str, Any]:
        return {"status_code": 200, "request_id": "req_1", "body": {"usage": usage}}

    chat_usage = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}
    assert usage_of(result(chat_usage)) == {"input": 12, "output": 30, "total": 42}
    responses_usage = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    assert usage_of(result(responses_usage)) == {"input": 7, "output": 3, "total": 10}
    assert usage_of(result({"prompt_tokens": 9, "total_tokens": 9})) == {"input": 9, "output": 0, "total": 9}
    # A service's own answer with a top-level usage, as before; a total made of its parts when missing
    assert usage_of({"usage": {"total_tokens": 5}}) == {"input": 0, "output": 0, "total": 5}
    assert usage_of({"usage": {"input_tokens": 2, "output_tokens": 3}}) == {"input": 2, "output": 3, "total": 5}
    assert usage_of({"status_code": 200, "body": {"id": "x"}}) is None
    assert usage_of(result({"total_tokens": -1})) is None
    assert used_tokens(result(chat_usage)) == 42


def test_the_usage_the_server_reports_corrects_the_token_charge() -> None:
    # Given a real answer of the server to a chat line
    with serve(Script()) as base_url:
        engine = configured(resolve_engine("openai"), load_config({"openai": {"base_url": base_url, "api_key": ""}}))
        outcome = run_by_hand(engine, [chat("x" * 40, max_tokens=5)])
    (result,) = outcome.results.values()
    # Then the tokens charged are the usage it reports: 12 tokens of text and 5 of answer
    assert used_tokens(result) == result["body"]["usage"]["total_tokens"] == 17


def test_a_response_is_kept_with_the_error_and_a_large_one_clipped() -> None:
    small = {"status_code": 400, "request_id": "req_1", "body": {"error": {"message": "no"}}}
    assert error_record(FailNow("bad", response=small))["response"] == small
    large = {"status_code": 502, "request_id": "req_2", "body": "<html>" + "x" * 100_000}
    kept = error_record(FailNow("bad gateway", response=large))["response"]
    assert (kept["status_code"], kept["request_id"]) == (502, "req_2")
    assert kept["body"].startswith("<html>xxx") and len(kept["body"]) <= RESPONSE_BYTES // 2
    # Another library's exception with a response object of its own adds nothing
    other = ValueError("x")
    other.response = object()  # type: ignore[attr-defined]
    assert "response" not in error_record(other)
