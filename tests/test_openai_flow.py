"""An OpenAI batch file through the command line, end to end: submit, `run --engine openai` as a
process against a real OpenAI-compatible server, and both output files read back line by line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Invoke, json_lines, small_run
from openai_server import Script, serve

from ctxbatch.io import ContextStore

KEY_VARIABLE = "CTXBATCH_TEST_OPENAI_KEY"


def line(custom_id: str, text: str) -> dict[str, Any]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": 8}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(text) for text in path.read_text().splitlines()]


def test_a_batch_file_runs_against_an_openai_compatible_server(
    ctxbatch: Invoke, store: ContextStore, loops: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_VARIABLE, "sk-test")
    texts = ["alpha", "beta", "BAD-REQUEST gamma", "delta", "epsilon", "zeta"]
    source = json_lines(tmp_path / "batch.jsonl", [line(f"request-{i}", t) for i, t in enumerate(texts)])
    submitted = ctxbatch("submit", source)
    assert submitted.exit_code == 0, submitted.stderr
    batch_id = submitted.stdout.strip()

    script = Script(latency=0.01, capacity=3)
    with serve(script) as base_url:
        config = {**small_run(), "openai": {"base_url": base_url, "api_key": "${" + KEY_VARIABLE + "}"}}
        loop = loops(config, "openai", "--until-empty")
        _, err = loop.communicate(timeout=120)
    assert loop.returncode == 0, err

    # What the server saw: every request at the line's path under the base URL, with the key.
    assert script.paths == {"/v1/chat/completions": script.calls}
    assert script.authorizations == {"Bearer sk-test": script.calls}
    assert script.calls >= len(texts)  # and more when it turned some away (429 beyond 3 at once)

    output, errors = tmp_path / "output.jsonl", tmp_path / "errors.jsonl"
    written = ctxbatch("results", batch_id, "--format", "openai", "-o", str(output), "--errors-output", str(errors))
    assert written.exit_code == 0, written.stderr
    served = read(output)
    assert [row["custom_id"] for row in served] == ["request-0", "request-1", "request-3", "request-4", "request-5"]
    for row in served:
        assert row["id"].startswith("batch_req_") and row["error"] is None
        response = row["response"]
        assert response["status_code"] == 200
        assert response["request_id"] in script.request_ids
        text = texts[int(row["custom_id"].split("-")[1])]
        assert response["body"]["choices"][0]["message"]["content"] == text
        assert response["body"]["usage"]["total_tokens"] > 0
    (refused,) = read(errors)
    assert refused["custom_id"] == "request-2"
    assert refused["response"]["status_code"] == 400
    assert refused["response"]["request_id"] in script.request_ids
    assert "BAD-REQUEST" in refused["response"]["body"]["error"]["message"]
    assert refused["error"]["code"] and "HTTP 400" in refused["error"]["message"]
    # A 400 is the request's own fault: failed at once, never retried.
    assert store.get_context(str(store.results(batch_id)["id"][2]))["attempts"] == 1
