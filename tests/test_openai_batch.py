"""OpenAI batch files in and out through the CLI: lines as contexts, output and error files, deadlines.

The engine's side is left out here (tests/test_openai_flow.py runs the whole flow against a
server): contexts are settled through the store's own fenced writes, as a loop would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Invoke, json_lines, until

from ctxbatch.io import ContextStore, error_record
from ctxbatch.io.openai_batch import EXPIRED_CODE

CHAT = "/v1/chat/completions"


def request(custom_id: str, text: str = "hi", url: str = CHAT) -> dict[str, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 5}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def answer(text: str) -> dict[str, Any]:
    """What the openai engine stores for a served request."""
    return {"status_code": 200, "request_id": f"req_{text}", "body": {"choices": [{"message": {"content": text}}]}}


def submitted(result: Any) -> str:
    assert result.exit_code == 0, result.stderr
    return str(result.stdout.strip())


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_openai_lines_become_contexts_with_their_custom_id(
    ctxbatch: Invoke, store: ContextStore, tmp_path: Path
) -> None:
    batch_id = submitted(ctxbatch("submit", json_lines(tmp_path / "in.jsonl", [request("a"), request("b", "yo")])))
    rows = store.results(batch_id)
    assert list(rows["custom_id"]) == ["a", "b"]
    assert list(rows["queue"]) == ["default", "default"]
    assert rows["payload"][1] == {"method": "POST", "url": CHAT, "body": request("b", "yo")["body"]}


def test_the_same_file_may_be_submitted_twice(ctxbatch: Invoke, store: ContextStore, tmp_path: Path) -> None:
    path = json_lines(tmp_path / "in.jsonl", [request("a"), request("b")])
    first, second = submitted(ctxbatch("submit", path)), submitted(ctxbatch("submit", path))
    assert first != second
    assert [store.counts(b)["total"] for b in (first, second)] == [2, 2]


def test_a_repeated_custom_id_is_refused_naming_both_lines(
    ctxbatch: Invoke, store: ContextStore, tmp_path: Path
) -> None:
    path = json_lines(tmp_path / "in.jsonl", [request("a"), request("b"), request("c"), request("b")])
    result = ctxbatch("submit", path)
    assert result.exit_code == 1
    assert f"{path}:4: custom_id: 'b' is given twice" in result.stderr
    assert f"first at {path}:2" in result.stderr
    assert "Traceback" not in result.output
    assert store.batches.count_documents({}) == 0
    assert store.contexts.count_documents({}) == 0


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ({"custom_id": "x", "method": "POST", "url": CHAT}, "body: "),  # recognised by --format openai only
        ({**request("x"), "method": "GET"}, "method: must be one of POST"),
        ({**request("x"), "url": "chat"}, "url: must be an API path"),
        ({**request("x"), "body": []}, "body: must be a JSON object"),
        ({**request("x"), "extra": 1}, "extra: unknown field (expected custom_id, method, url, body)"),
        ({**request("x"), "custom_id": ""}, "custom_id: must be a non-empty string"),
    ],
)
def test_a_bad_openai_line_is_named_by_line_and_field(
    ctxbatch: Invoke, store: ContextStore, tmp_path: Path, line: dict[str, Any], fragment: str
) -> None:
    path = json_lines(tmp_path / "in.jsonl", [request("ok"), line])
    result = ctxbatch("submit", "--format", "openai", path)
    assert result.exit_code == 1
    assert f"{path}:2: {fragment}" in result.stderr, result.stderr
    assert store.batches.count_documents({}) == 0


def test_results_in_openai_format_split_output_and_errors_in_input_order(
    ctxbatch: Invoke, store: ContextStore, tmp_path: Path
) -> None:
    lines = [request(f"r{i}") for i in range(5)]
    batch_id = submitted(ctxbatch("submit", json_lines(tmp_path / "in.jsonl", lines)))
    claim = store.claim(10, "test")
    ids = store.results(batch_id)["id"].tolist()
    kept = {"status_code": 400, "request_id": "req_bad", "body": {"error": {"message": "no", "code": "bad_model"}}}
    failure = ValueError("the model is unknown")
    failure.response = kept  # type: ignore[attr-defined]
    store.settle(
        claim,
        results={ids[0]: answer("zero"), ids[3]: answer("three")},
        errors={ids[1]: error_record(failure), ids[4]: error_record(RuntimeError("no answer"))},
        release=[ids[2]],
    )
    store.cancel(batch_id)  # the released one: cancelled before it ran
    output, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    result = ctxbatch("results", batch_id, "--format", "openai", "-o", str(output), "--errors-output", str(errors))
    assert result.exit_code == 0, result.stderr
    assert read_lines(output) == [
        {"id": f"batch_req_{ids[0]}", "custom_id": "r0", "response": answer("zero"), "error": None},
        {"id": f"batch_req_{ids[3]}", "custom_id": "r3", "response": answer("three"), "error": None},
    ]
    failed, cancelled, lost = read_lines(errors)
    assert failed == {
        "id": f"batch_req_{ids[1]}",
        "custom_id": "r1",
        "response": kept,
        "error": {"code": "bad_model", "message": "the model is unknown"},
    }
    assert (cancelled["custom_id"], cancelled["response"], cancelled["error"]["code"]) == (
        "r2",
        None,
        "batch_cancelled",
    )
    assert (lost["custom_id"], lost["response"], lost["error"]["code"]) == ("r4", None, "runtime_error")


def test_without_errors_output_the_failures_are_counted_not_written(
    ctxbatch: Invoke, store: ContextStore, tmp_path: Path
) -> None:
    batch_id = submitted(ctxbatch("submit", json_lines(tmp_path / "in.jsonl", [request("a"), request("b")])))
    store.cancel(batch_id)
    result = ctxbatch("results", batch_id, "--format", "openai")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "2 failed, expired or cancelled requests are not written; add --errors-output" in result.stderr


def test_a_deadline_expires_what_is_pending_and_keeps_what_completed_or_was_in_flight(
    ctxbatch: Invoke, store: ContextStore, tmp_path: Path
) -> None:
    path = json_lines(tmp_path / "in.jsonl", [request(f"r{i}") for i in range(4)])
    batch_id = submitted(ctxbatch("submit", "--completion-window", "1s", path))
    assert store.batch_status(batch_id)["expires_at"] is not None
    ids = store.results(batch_id)["id"].tolist()
    done = store.claim(1, "test")
    store.complete(done, {ids[0]: answer("zero")})
    in_flight = store.claim(1, "test")
    until(lambda: store.batch_status(batch_id)["counts"]["expired"] == 2, "the deadline to pass")
    # The call in flight when the deadline passed finishes and is kept.
    assert store.complete(in_flight, {ids[1]: answer("one")}).ok
    report = store.batch_status(batch_id)
    assert report["status"] == "expired"
    assert (report["counts"]["completed"], report["counts"]["expired"]) == (2, 2)
    assert store.claim(10, "test").ids == []

    output, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    ctxbatch("results", batch_id, "--format", "openai", "-o", str(output), "--errors-output", str(errors))
    assert [line["custom_id"] for line in read_lines(output)] == ["r0", "r1"]
    assert [(line["custom_id"], line["error"]["code"]) for line in read_lines(errors)] == [
        ("r2", EXPIRED_CODE),
        ("r3", EXPIRED_CODE),
    ]

    retried = ctxbatch("retry", batch_id, "--expired")
    assert retried.exit_code == 0, retried.stderr
    assert "2 expired contexts" in retried.stderr
    again = store.batch_status(batch_id)
    assert (again["status"], again["counts"]["pending"], again["counts"]["expired"]) == ("processing", 2, 0)
    assert again["expires_at"] > report["expires_at"]  # a fresh window
    assert len(store.claim(10, "test")) == 2


def test_a_bad_completion_window_is_refused(ctxbatch: Invoke, store: ContextStore, tmp_path: Path) -> None:
    result = ctxbatch("submit", "--completion-window", "soon", json_lines(tmp_path / "in.jsonl", [request("a")]))
    assert result.exit_code == 1
    assert "completion_window: must be a duration such as 24h, 30m or 90s, got 'soon'" in result.stderr
    assert store.batches.count_documents({}) == 0
