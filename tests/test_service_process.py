"""`ctxbatch serve` as a real process, spoken to over a socket with httpx; and its refusals."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import serve_process
from pymongo import MongoClient

from ctxbatch.cli import main
from ctxbatch.service.security import TOKEN_VARIABLE, is_loopback

TOKEN = "process-token"
BODY_LIMIT = 2_000


@pytest.fixture(scope="module")
def served(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a `ctxbatch serve` process with a token and a small body limit; stopped after."""
    home = tmp_path_factory.mktemp("serve")
    config = home / "config.yaml"
    config.write_text(f"api:\n  max_body_bytes: {BODY_LIMIT}\n")
    database = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with serve_process(mongo_uri, database, config, TOKEN) as url:
            yield url
    finally:
        client: MongoClient[dict[str, object]] = MongoClient(mongo_uri)
        client.drop_database(database)
        client.close()


@pytest.fixture
def http(served: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        yield client


def test_a_served_bulk_submission_is_accepted_and_its_status_polled(http: httpx.Client) -> None:
    accepted = http.post("/api/contexts/bulk", json=[{"payload": {"i": i}} for i in range(5)])

    assert accepted.status_code == 202
    status = http.get(accepted.headers["location"])
    assert status.json()["counts"] == {
        "total": 5,
        "pending": 5,
        "processing": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "expired": 0,
    }


def test_a_served_chunked_body_past_the_limit_is_refused(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"["
        for _ in range(5):
            yield b" " * (BODY_LIMIT // 2)
        yield b"]"

    answer = http.post("/api/contexts/bulk", content=chunks(), headers={"Content-Type": "application/json"})

    assert answer.status_code == 413
    assert "bytes" in answer.json()["error"]


def test_the_served_api_needs_the_token_from_the_environment(served: str) -> None:
    assert httpx.get(f"{served}/api/batches").status_code == 401
    assert httpx.get(f"{served}/healthz").status_code == 200


def test_the_served_metrics_are_prometheus_text(http: httpx.Client) -> None:
    answer = http.get("/metrics")

    assert answer.headers["content-type"].startswith("text/plain")
    assert "ctxbatch_queue_length{" in answer.text


def test_serve_refuses_a_public_host_without_a_token(monkeypatch: pytest.MonkeyPatch, ctxbatch_home: Path) -> None:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)

    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0"])

    assert result.exit_code != 0
    assert "--insecure" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "host,loopback",
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
        ("example.com", False),
        ("::", False),
    ],
)
def test_loopback_hosts_are_told_apart(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
