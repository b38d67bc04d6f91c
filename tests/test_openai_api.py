"""OpenAI's Files and Batches API under /v1, spoken to by the real `openai` SDK over a socket.

The first test runs `ctxbatch serve` as a process; the others serve the app with uvicorn in a thread
over the test's own database. The engine's side is left out: contexts are settled through the
store's fenced writes, as a loop would (tests/test_openai_flow.py runs a real loop).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import conftest
import httpx
import openai
import pytest
import yaml
from conftest import serve_process, until
from openai import OpenAI

from ctxbatch.config import Settings
from ctxbatch.io import ContextStore
from ctxbatch.io.files import CHUNK_BYTES
from ctxbatch.io.openai_batch import CANCELLED_CODE, EXPIRED_CODE
from ctxbatch.service import create_app
from ctxbatch.service.security import TOKEN_VARIABLE

TOKEN = "v1-token"
CHAT = "/v1/chat/completions"
QUEUE = "openai-tests"


def request(custom_id: str, text: str = "hi", url: str = CHAT) -> dict[str, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def answer(text: str) -> dict[str, Any]:
    """What the openai engine stores for a served request."""
    return {"status_code": 200, "request_id": f"req_{text}", "body": {"choices": [{"message": {"content": text}}]}}


REFUSED = {
    "type": "HTTPError",
    "message": "the model is unknown",
    "traceback": "",
    "response": {"status_code": 400, "request_id": "req_bad", "body": {"error": {"code": "model_not_found"}}},
}


def lines_of(content: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in content.splitlines()]


def sdk(url: str, token: str = TOKEN) -> OpenAI:
    # No retries: a test sees the first answer, as it was given.
    return OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0, timeout=60)


@contextmanager
def serving(store: ContextStore, **api: Any) -> Iterator[str]:
    """The app over `store` (a token required, batches to QUEUE) on a real socket: its URL."""
    with conftest.serving(create_app(store, Settings(api={"token": TOKEN, "openai_queue": QUEUE, **api}))) as url:
        yield url


@pytest.fixture
def client(store: ContextStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAI]:
    """The SDK on the app over this test's store, token required, batches to QUEUE."""
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    with serving(store) as url, sdk(url) as opened:
        yield opened


@pytest.fixture
def served(mongo_uri: str, database: str, tmp_path: Path) -> Iterator[str]:
    """`ctxbatch serve` as a process on this test's database, with a token and QUEUE; stopped after."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"api": {"openai_queue": QUEUE}}))
    with serve_process(mongo_uri, database, config, TOKEN) as url:
        yield url


def upload(client: OpenAI, lines: list[Any], name: str = "requests.jsonl") -> str:
    return client.files.create(file=(name, jsonl(lines)), purpose="batch").id


def settle_all(store: ContextStore, batch_id: str, outcome: Callable[[str, str], Any]) -> None:
    """Claim the queue's contexts and settle each: outcome(id, custom_id) is a result, or an error dict."""
    custom_ids = {row["id"]: row["custom_id"] for row in store.iter_results(batch_id, payload=False)}
    claim = store.claim(len(custom_ids), "test", queues=[QUEUE])
    outcomes = {cid: outcome(cid, custom_ids[cid]) for cid in claim.ids}
    errors = {cid: o for cid, o in outcomes.items() if isinstance(o, dict) and "traceback" in o}
    results = {cid: o for cid, o in outcomes.items() if cid not in errors}
    store.settle(claim, results=results, errors=errors)


# -- the whole flow -----------------------------------------------------------------------


def test_the_sdk_uploads_batches_polls_and_reads_the_output_of_ctxbatch_serve(
    served: str, store: ContextStore, tmp_path: Path
) -> None:
    # Given a file of three requests uploaded through the SDK, as a user does
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl([request("a", "one"), request("b", "two"), request("c", "three")]))
    client = sdk(served)
    with path.open("rb") as stream:
        uploaded = client.files.create(file=stream, purpose="batch")
    assert (uploaded.object, uploaded.purpose, uploaded.bytes) == ("file", "batch", path.stat().st_size)
    assert client.files.retrieve(uploaded.id).filename == "requests.jsonl"
    assert client.files.content(uploaded.id).content == path.read_bytes()

    # When a batch is made of it
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h", metadata={"run": "nightly"}
    )
    assert (batch.object, batch.status, batch.endpoint, batch.input_file_id) == (
        "batch",
        "in_progress",
        CHAT,
        uploaded.id,
    )
    assert batch.request_counts is not None and batch.request_counts.total == 3
    assert batch.metadata == {"run": "nightly"} and batch.completion_window == "24h"
    assert batch.model == "m"  # every request's
    assert batch.expires_at is not None and batch.expires_at - batch.created_at == 24 * 3600
    assert (batch.output_file_id, batch.error_file_id) == (None, None)
    batch_id = batch.id.removeprefix("batch_")
    assert store.batch_status(batch_id)["queue"] == QUEUE  # api.openai_queue

    # And its requests are answered, one refused by the service
    settle_all(store, batch_id, lambda _, custom_id: REFUSED if custom_id == "b" else answer(custom_id))

    # Then the SDK sees it completed, with its output and error files
    done = until(lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b, "the batch to complete")
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    assert done.completed_at is not None and done.in_progress_at == done.created_at
    assert done.output_file_id is not None and done.error_file_id is not None
    output = client.files.content(done.output_file_id).content
    assert [(line["custom_id"], line["response"]) for line in lines_of(output)] == [
        ("a", answer("a")),
        ("c", answer("c")),
    ]
    assert all(line["id"].startswith("batch_req_") and line["error"] is None for line in lines_of(output))
    [refused] = lines_of(client.files.content(done.error_file_id).content)
    assert refused["custom_id"] == "b"
    assert refused["response"] == REFUSED["response"]
    assert refused["error"] == {"code": "model_not_found", "message": "the model is unknown"}
    described = client.files.retrieve(done.output_file_id)
    assert (described.bytes, described.purpose) == (len(output), "batch_output")
    assert [b.id for b in client.batches.list()] == [batch.id]

    # And a wrong token is OpenAI's 401
    with pytest.raises(openai.AuthenticationError) as refused_token:
        sdk(served, "not-the-token").batches.retrieve(batch.id)
    assert refused_token.value.code == "invalid_api_key"


def test_a_cancelled_batch_keeps_what_completed_and_errors_the_rest(client: OpenAI, store: ContextStore) -> None:
    batch = client.batches.create(
        input_file_id=upload(client, [request(f"r{i}") for i in range(4)]), endpoint=CHAT, completion_window="24h"
    )
    batch_id = batch.id.removeprefix("batch_")
    ids = [row["id"] for row in store.iter_results(batch_id, payload=False)]
    store.complete(store.claim(1, "test", queues=[QUEUE]), {ids[0]: answer("r0")})
    running = store.claim(1, "test", queues=[QUEUE])  # in flight when the cancel comes

    cancelling = client.batches.cancel(batch.id)

    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None and cancelling.cancelled_at is None
    # The request in flight finishes and is kept; nothing else starts.
    store.complete(running, {ids[1]: answer("r1")})
    assert store.claim(10, "test", queues=[QUEUE]).ids == []
    cancelled = client.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert cancelled.request_counts is not None
    assert (cancelled.request_counts.total, cancelled.request_counts.completed) == (4, 2)
    assert cancelled.output_file_id is not None and cancelled.error_file_id is not None
    output = lines_of(client.files.content(cancelled.output_file_id).content)
    assert [line["custom_id"] for line in output] == ["r0", "r1"]
    errors = lines_of(client.files.content(cancelled.error_file_id).content)
    assert [(line["custom_id"], line["error"]["code"]) for line in errors] == [
        ("r2", CANCELLED_CODE),
        ("r3", CANCELLED_CODE),
    ]
    # Cancelling again answers the batch as it is.
    assert client.batches.cancel(batch.id).status == "cancelled"


def test_what_the_window_leaves_pending_expires(client: OpenAI, store: ContextStore) -> None:
    # "1s": any duration ctxbatch reads is taken, besides OpenAI's "24h".
    batch = client.batches.create(
        input_file_id=upload(client, [request("a"), request("b")]),
        endpoint=CHAT,
        completion_window="1s",  # type: ignore[arg-type]
    )

    expired = until(lambda: (b := client.batches.retrieve(batch.id)).status == "expired" and b, "the window to pass")

    assert expired.expired_at is not None and expired.output_file_id is None
    assert expired.error_file_id is not None
    errors = lines_of(client.files.content(expired.error_file_id).content)
    assert [line["error"]["code"] for line in errors] == [EXPIRED_CODE, EXPIRED_CODE]


# -- refusals -------------------------------------------------------------------------------


def test_a_bad_line_is_refused_at_upload_naming_it(client: OpenAI, store: ContextStore) -> None:
    lines = [request("a"), request("b"), {**request("c"), "body": ["not", "an", "object"]}]

    with pytest.raises(openai.BadRequestError) as refused:
        upload(client, lines)

    assert refused.value.status_code == 400
    assert "line 3: body: must be a JSON object" in refused.value.message
    assert (refused.value.param, refused.value.type) == ("body", "invalid_request_error")
    assert store.connection.files.count_documents({}) == 0


@pytest.mark.parametrize(
    ("content", "fragment", "code"),
    [
        (
            jsonl([request("a"), request("b"), request("a")]),
            "line 3: custom_id: 'a' is given twice",
            "duplicate_custom_id",
        ),
        (jsonl([request("a")]) + b"{not json\n", "line 2: is not valid JSON", "invalid_json_line"),
        (jsonl([{k: v for k, v in request("a").items() if k != "method"}]), "line 1: method: is missing", None),
        (b"\n\n", "the file holds no requests", "empty_file"),
    ],
)
def test_a_file_that_is_not_batch_requests_is_refused(
    client: OpenAI, store: ContextStore, content: bytes, fragment: str, code: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("bad.jsonl", content), purpose="batch")

    assert fragment in refused.value.message
    if code is not None:
        assert refused.value.code == code
    assert store.connection.files.count_documents({}) == 0


def test_a_file_for_another_purpose_is_refused(client: OpenAI, store: ContextStore) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("a.jsonl", jsonl([request("a")])), purpose="fine-tune")

    assert refused.value.param == "purpose"
    assert store.connection.files.count_documents({}) == 0


def test_the_purpose_may_follow_the_file(client: OpenAI) -> None:
    # curl -F file=@... -F purpose=batch sends the file first; the SDK sends the purpose first.
    boundary = "b0undary"
    part = f"--{boundary}\r\nContent-Disposition: form-data; name="
    body = (
        f'{part}"file"; filename="late.jsonl"\r\n\r\n'.encode()
        + jsonl([request("a")])
        + f'\r\n{part}"purpose"\r\n\r\nbatch\r\n--{boundary}--\r\n'.encode()
    )
    base = str(client.base_url).removesuffix("/v1/")
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": f"multipart/form-data; boundary={boundary}"}

    answer = httpx.post(f"{base}/v1/files", content=body, headers=headers)

    assert answer.status_code == 200, answer.text
    assert client.files.content(answer.json()["id"]).content == jsonl([request("a")])


def test_a_file_past_the_size_limit_is_413_and_not_kept(store: ContextStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    with (
        serving(store, max_file_bytes=1000) as url,
        sdk(url) as client,
        pytest.raises(openai.APIStatusError) as refused,
    ):
        upload(client, [request(f"r{i}", "x" * 100) for i in range(20)])

    assert refused.value.status_code == 413
    assert "api.max_file_bytes" in refused.value.message
    assert store.connection.files.count_documents({}) == 0


def test_a_line_whose_url_is_not_the_endpoint_fails_the_batch_naming_the_line(
    client: OpenAI, store: ContextStore
) -> None:
    file_id = upload(client, [request("a"), request("b", url="/v1/embeddings")])

    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")

    assert batch.status == "failed" and batch.failed_at is not None and batch.in_progress_at is None
    assert batch.errors is not None and batch.errors.data is not None
    [error] = batch.errors.data
    assert (error.line, error.param, error.code) == (2, "url", "invalid_url")
    assert error.message is not None and "/v1/embeddings" in error.message
    assert store.counts(batch.id.removeprefix("batch_"))["total"] == 0
    assert client.batches.retrieve(batch.id).status == "failed"
    assert [b.id for b in client.batches.list()] == [batch.id]


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"endpoint": "/v1/images"}, "endpoint"),
        ({"completion_window": "soon"}, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"input_file_id": "file-nothing"}, "input_file_id"),
    ],
)
def test_a_batch_with_a_bad_parameter_is_refused_naming_it(
    client: OpenAI, store: ContextStore, changes: dict[str, Any], param: str
) -> None:
    given = {"input_file_id": upload(client, [request("a")]), "endpoint": CHAT, "completion_window": "24h", **changes}

    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as refused:
        client.batches.create(**given)

    assert isinstance(refused.value, openai.APIStatusError)
    assert refused.value.param == param
    assert store.batches.count_documents({}) == 0


def test_unknown_batches_and_files_are_not_found(client: OpenAI) -> None:
    for call in (
        lambda: client.batches.retrieve("batch_nothing"),
        lambda: client.batches.cancel("batch_nothing"),
        lambda: client.files.retrieve("file-nothing"),
        lambda: client.files.content("file-nothing"),
        lambda: client.files.content("file-nothing-output"),
        lambda: client.files.delete("file-nothing"),
    ):
        with pytest.raises(openai.NotFoundError) as missing:
            call()
        assert missing.value.type == "invalid_request_error"
        assert "nothing" in missing.value.message


def test_v1_answers_openai_errors_and_api_keeps_its_own(client: OpenAI) -> None:
    base = str(client.base_url).removesuffix("/v1/")
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        missing = http.post("/v1/batches", json={"endpoint": CHAT, "completion_window": "24h"})
        unknown_route = http.get("/v1/models")
        ours = http.get("/api/batches/nothing")

    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "input_file_id"
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert unknown_route.status_code == 404 and unknown_route.json()["error"]["type"] == "invalid_request_error"
    assert ours.status_code == 404 and set(ours.json()) == {"error", "problems"}


# -- files ---------------------------------------------------------------------------------


def test_a_file_larger_than_a_chunk_comes_back_byte_for_byte(client: OpenAI, store: ContextStore) -> None:
    # Lines of about 2 KB, some ending CRLF, one blank, non-ASCII text, and no newline at the end.
    lines = [json.dumps(request(f"r{i}", f"é {i} " + "x" * 2000)).encode() for i in range(3000)]
    content = b"".join(line + (b"\r\n" if i % 3 else b"\n") for i, line in enumerate(lines[:-1]))
    content += b"\n" + lines[-1]
    assert len(content) > CHUNK_BYTES

    file_id = client.files.create(file=("big.jsonl", content), purpose="batch").id

    assert store.connection.files.count_documents({"file_id": {"$eq": file_id}}) >= 2
    assert client.files.retrieve(file_id).bytes == len(content)
    assert client.files.content(file_id).content == content
    # Read back across its chunks, every request becomes a context, in order.
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    assert batch.request_counts is not None and batch.request_counts.total == 3000
    rows = store.iter_results(batch.id.removeprefix("batch_"), payload=False)
    assert [row["custom_id"] for row in rows] == [f"r{i}" for i in range(3000)]


def test_a_deleted_file_is_gone_and_its_batch_kept(client: OpenAI, store: ContextStore) -> None:
    file_id = upload(client, [request("a")])
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")

    deleted = client.files.delete(file_id)

    assert (deleted.id, deleted.deleted) == (file_id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)
    assert store.connection.files.count_documents({}) == 0
    assert client.batches.retrieve(batch.id).request_counts.total == 1  # type: ignore[union-attr]


def test_an_upload_cut_off_is_deleted_once_its_lease_expired(store: ContextStore) -> None:
    # Given an upload that stored a chunk and then stopped (its server died), its lease run out
    cut_off = store.upload()
    cut_off.write(jsonl([request(f"r{i}", "x" * 1000) for i in range(5000)]))
    assert store.connection.files.count_documents({"file_id": {"$eq": cut_off.file_id}}) >= 1
    store.connection.files.update_one({"_id": cut_off.file_id}, {"$set": {"expires_ms": 0}})

    # When the next upload starts
    store.upload().abandon()

    # Then nothing of the first is left
    assert store.connection.files.count_documents({}) == 0


# -- listing --------------------------------------------------------------------------------


def test_batches_are_listed_newest_first_page_by_page(client: OpenAI, store: ContextStore) -> None:
    file_id = upload(client, [request("a")])
    made = [client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h").id for _ in range(3)]
    store.submit([{"payload": {"i": 1}}])  # not an OpenAI batch: not listed

    first = client.batches.list(limit=2)

    assert [b.id for b in first.data] == made[:0:-1]
    assert first.has_more is True
    assert [b.id for b in client.batches.list(limit=2)] == made[::-1]  # the SDK follows `after`
    assert [b.id for b in client.batches.list(after=made[1]).data] == [made[0]]


def test_files_are_listed_newest_first_page_by_page_in_either_order(client: OpenAI, store: ContextStore) -> None:
    # Given three uploads, one larger than a chunk, an upload in progress and a batch
    made = [upload(client, [request("a")], name=f"f{i}.jsonl") for i in range(2)]
    big = [request(f"r{i}", "x" * 2000) for i in range(3000)]
    made.append(upload(client, big, name="big.jsonl"))
    store.upload().write(jsonl([request("b")]))
    client.batches.create(input_file_id=made[0], endpoint=CHAT, completion_window="24h")

    # When they are listed, then only the stored files are, newest first, and the SDK follows `after`
    first = client.files.list(limit=2)
    assert [f.id for f in first.data] == made[:0:-1]
    assert first.has_more is True
    assert [f.filename for f in first.data] == ["big.jsonl", "f1.jsonl"]
    assert [f.id for f in client.files.list(limit=2)] == made[::-1]
    assert [f.id for f in client.files.list(after=made[1]).data] == [made[0]]
    # and oldest first with order=asc, a purpose filters, and an output file is not among them
    assert [f.id for f in client.files.list(order="asc", limit=1)] == made
    assert [f.id for f in client.files.list(order="asc", after=made[0]).data] == made[1:]
    assert [f.id for f in client.files.list(purpose="batch")] == made[::-1]
    assert client.files.list(purpose="batch_output").data == []


def test_a_file_list_after_an_unknown_file_or_in_a_bad_order_is_a_400(client: OpenAI) -> None:
    upload(client, [request("a")])
    with pytest.raises(openai.BadRequestError) as unknown:
        client.files.list(after="file-nothing")
    assert unknown.value.body["param"] == "after"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.files.list(order="sideways")  # type: ignore[arg-type]


def test_a_batch_shows_the_model_only_when_every_request_names_the_same_one(client: OpenAI) -> None:
    one = upload(client, [request("a"), request("b")])
    other = {**request("c"), "body": {**request("c")["body"], "model": "n"}}
    mixed = upload(client, [request("a"), other, request("d")])

    made = [client.batches.create(input_file_id=f, endpoint=CHAT, completion_window="24h") for f in (one, mixed)]

    assert [batch.model for batch in made] == ["m", None]
    assert [batch.model for batch in client.batches.list()] == [None, "m"]
