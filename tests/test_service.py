"""The HTTP API's routes over a real socket and a real store (embedded nx-27017)."""

from __future__ import annotations

import json

import httpx
from conftest import http_client

from ctxbatch.config import Settings
from ctxbatch.io import ContextStore, error_record
from ctxbatch.service import create_app

NDJSON = "application/x-ndjson"


def _contexts(n: int, priority: int = 50) -> list[dict[str, object]]:
    return [{"payload": {"i": i}, "priority": priority} for i in range(n)]


# -- submit -----------------------------------------------------------------------------------


def test_bulk_submit_answers_202_with_the_batch_id_count_and_location(api: httpx.Client, store: ContextStore) -> None:
    answer = api.post("/api/contexts/bulk", json=_contexts(3))

    assert answer.status_code == 202
    body = answer.json()
    assert body["count"] == 3
    assert answer.headers["location"] == f"/api/batches/{body['batch_id']}"
    assert store.batch_status(body["batch_id"])["counts"]["pending"] == 3


def test_bulk_submit_takes_an_object_with_contexts_and_a_name(api: httpx.Client, store: ContextStore) -> None:
    answer = api.post("/api/contexts/bulk", json={"contexts": _contexts(2), "name": "nightly"})

    assert answer.status_code == 202
    assert store.batch_status(answer.json()["batch_id"])["name"] == "nightly"


def test_bulk_submit_stores_priority_key_and_default_priority(api: httpx.Client, store: ContextStore) -> None:
    contexts = [{"payload": {"a": 1}, "priority": 3, "key": "k-1"}, {"payload": {}}]

    answer = api.post("/api/contexts/bulk", json=contexts)

    rows = store.iter_results(answer.json()["batch_id"])
    assert {row["key"]: row["priority"] for row in rows} == {"k-1": 3, None: 50}


# -- batches ----------------------------------------------------------------------------------


def test_batch_status_is_the_stores_batch_status(api: httpx.Client, store: ContextStore) -> None:
    batch_id = store.submit(_contexts(4))

    answer = api.get(f"/api/batches/{batch_id}")

    assert answer.status_code == 200
    assert answer.json() == store.batch_status(batch_id)


def test_unknown_batch_is_404_with_a_json_message(api: httpx.Client) -> None:
    answer = api.get("/api/batches/no-such-batch")

    assert answer.status_code == 404
    assert "no-such-batch" in answer.json()["error"]


def test_batches_are_listed_newest_first(api: httpx.Client, store: ContextStore) -> None:
    first, second = store.submit(_contexts(1)), store.submit(_contexts(1))

    listed = api.get("/api/batches").json()["batches"]

    assert [b["batch_id"] for b in listed] == [second, first]


def test_batches_are_filtered_by_status_and_limited(api: httpx.Client, store: ContextStore) -> None:
    cancelled = store.submit(_contexts(1))
    store.cancel(cancelled)
    pending = [store.submit(_contexts(1)) for _ in range(3)]

    assert [b["batch_id"] for b in api.get("/api/batches?status=cancelled").json()["batches"]] == [cancelled]
    assert [b["batch_id"] for b in api.get("/api/batches?status=pending&limit=2").json()["batches"]] == [
        pending[2],
        pending[1],
    ]


def test_cancel_cancels_the_pending_contexts(api: httpx.Client, store: ContextStore) -> None:
    batch_id = store.submit(_contexts(3))

    answer = api.post(f"/api/batches/{batch_id}/cancel")

    assert answer.json() == {"batch_id": batch_id, "cancelled": 3}
    assert store.batch_status(batch_id)["status"] == "cancelled"


def test_retry_sends_failed_contexts_back_to_the_queue(api: httpx.Client, store: ContextStore) -> None:
    batch_id = store.submit(_contexts(2))
    claim = store.claim(2, "test")
    store.fail(claim, {claim.ids[0]: error_record(ValueError("bad row"))}, retry_at=None)
    store.release(claim, claim.ids[1:])

    answer = api.post(f"/api/batches/{batch_id}/retry")

    assert answer.json() == {"batch_id": batch_id, "retried": 1}
    assert store.batch_status(batch_id)["counts"]["pending"] == 2


# -- results and contexts ---------------------------------------------------------------------


def test_results_show_status_result_error_and_attempts(api: httpx.Client, store: ContextStore) -> None:
    batch_id = store.submit(_contexts(2))
    claim = store.claim(2, "test")
    store.settle(claim, results={claim.ids[0]: {"answer": 42}}, errors={claim.ids[1]: error_record(ValueError("no"))})

    contexts = {c["id"]: c for c in api.get(f"/api/batches/{batch_id}/results").json()["contexts"]}

    done, failed = contexts[claim.ids[0]], contexts[claim.ids[1]]
    assert (done["status"], done["result"], done["attempts"]) == ("completed", {"answer": 42}, 1)
    assert (failed["status"], failed["error"]["message"], failed["attempts"]) == ("failed", "no", 1)


def test_results_are_paged_with_an_opaque_cursor_until_none(api: httpx.Client, store: ContextStore) -> None:
    batch_id = store.submit(_contexts(7))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = api.get(f"/api/batches/{batch_id}/results", params=params).json()
        seen += [c["id"] for c in page["contexts"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert pages == 3
    assert seen == [row["id"] for row in store.iter_results(batch_id)]


def test_results_without_payload_leave_it_out(api: httpx.Client, store: ContextStore) -> None:
    batch_id = store.submit(_contexts(1))

    page = api.get(f"/api/batches/{batch_id}/results?payload=false").json()

    assert page["contexts"][0]["payload"] is None


def test_results_as_json_lines_hold_every_context(api: httpx.Client, store: ContextStore) -> None:
    batch_id = store.submit(_contexts(5))

    answer = api.get(f"/api/batches/{batch_id}/results?limit=1", headers={"Accept": NDJSON})

    assert answer.headers["content-type"].startswith(NDJSON)
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert [line["payload"]["i"] for line in lines] == [r["payload"]["i"] for r in store.iter_results(batch_id)]


def test_results_as_json_lines_of_an_unknown_batch_is_404(api: httpx.Client) -> None:
    answer = api.get("/api/batches/nope/results", headers={"Accept": NDJSON})

    assert answer.status_code == 404
    assert answer.json()["error"]


def test_a_context_is_read_by_id(api: httpx.Client, store: ContextStore) -> None:
    store.submit([{"payload": {"x": 1}, "key": "ctx-1"}])

    answer = api.get("/api/contexts/ctx-1")

    assert answer.json()["payload"] == {"x": 1}
    assert answer.json()["status"] == "pending"


def test_unknown_context_is_404(api: httpx.Client) -> None:
    assert api.get("/api/contexts/nope").status_code == 404


# -- health, metrics, OpenAPI -----------------------------------------------------------------


def test_healthz_answers_ok_while_the_database_answers(api: httpx.Client) -> None:
    answer = api.get("/healthz")

    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"


def test_healthz_is_503_when_the_database_does_not_answer() -> None:
    # Port 1: nothing listens, so the ping fails fast instead of waiting for a server.
    unreachable = ContextStore("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300&connectTimeoutMS=300", "x")
    with http_client(create_app(unreachable, Settings())) as client:
        answer = client.get("/healthz")
    unreachable.close()

    assert answer.status_code == 503
    assert "database" in answer.json()["error"]


def test_metrics_report_the_queue_length_by_level_and_status(api: httpx.Client, store: ContextStore) -> None:
    store.submit(_contexts(2, priority=5) + _contexts(3, priority=80))
    store.claim(1, "test")

    text = api.get("/metrics").text

    assert 'ctxbatch_queue_length{level="high",status="pending"} 1.0' in text
    assert 'ctxbatch_queue_length{level="high",status="processing"} 1.0' in text
    assert 'ctxbatch_queue_length{level="low",status="pending"} 3.0' in text


def test_metrics_count_submitted_contexts_and_requests(api: httpx.Client) -> None:
    api.post("/api/contexts/bulk", json=_contexts(4))
    api.get("/api/batches/nope")

    text = api.get("/metrics").text

    assert "ctxbatch_contexts_submitted_total 4.0" in text
    assert 'ctxbatch_http_requests_total{method="POST",route="/api/contexts/bulk",status="202"} 1.0' in text
    assert 'ctxbatch_http_requests_total{method="GET",route="/api/batches/{batch_id}",status="404"} 1.0' in text
    assert 'ctxbatch_http_request_duration_seconds_count{method="POST",route="/api/contexts/bulk"} 1.0' in text


def test_openapi_describes_every_route_and_the_bulk_body(api: httpx.Client) -> None:
    document = api.get("/openapi.json").json()

    routes = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert routes == {
        ("POST", "/api/contexts/bulk"),
        ("GET", "/api/batches"),
        ("GET", "/api/batches/{batch_id}"),
        ("GET", "/api/batches/{batch_id}/results"),
        ("POST", "/api/batches/{batch_id}/cancel"),
        ("POST", "/api/batches/{batch_id}/retry"),
        ("GET", "/api/contexts/{context_id}"),
        ("GET", "/api/stats"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("POST", "/v1/files"),
        ("GET", "/v1/files"),
        ("GET", "/v1/files/{file_id}"),
        ("GET", "/v1/files/{file_id}/content"),
        ("DELETE", "/v1/files/{file_id}"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/batches"),
        ("GET", "/v1/batches/{batch_id}"),
        ("POST", "/v1/batches/{batch_id}/cancel"),
    }
    body = document["paths"]["/api/contexts/bulk"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].rsplit("/", 1)[-1] in document["components"]["schemas"]
    assert document["components"]["schemas"]["ContextIn"]["additionalProperties"] is False
