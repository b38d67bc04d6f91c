"""Token usage: read from results in OpenAI's shapes, summed into each batch at settle, shown in status and stats."""

from __future__ import annotations

import json
import pickle
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from conftest import Commands
from test_claims import expire
from test_display import read_table

from ctxbatch.cli import main
from ctxbatch.io import Claim, ContextStore, usage_of
from ctxbatch.io.stats import sampled_tokens

CHAT = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}
RESPONSES = {"input_tokens": 12, "output_tokens": 30, "total_tokens": 42}
ERROR = {"type": "ValueError", "message": "bad", "traceback": ""}


def chat(prompt: int, completion: int) -> dict[str, Any]:
    """A chat completion's answer that reports this usage."""
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {"object": "chat.completion", "choices": [], "usage": usage}


# -- usage_of: OpenAI's shapes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [
        {"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": CHAT},
        {"status_code": 200, "request_id": "req-1", "body": {"object": "chat.completion", "usage": CHAT}},
        {"object": "response", "output": [], "usage": RESPONSES},
        {"status_code": 200, "request_id": "req-2", "body": {"object": "response", "usage": RESPONSES}},
    ],
    ids=["chat", "batch-line-chat", "responses", "batch-line-responses"],
)
def test_usage_of_reads_openais_shapes_as_input_output_total(result: dict[str, Any]) -> None:
    assert usage_of(result) == {"input": 12, "output": 30, "total": 42}


def test_usage_of_embeddings_has_no_output() -> None:
    answer = {"object": "list", "data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert usage_of(answer) == {"input": 8, "output": 0, "total": 8}


def test_a_usage_without_a_total_totals_input_and_output() -> None:
    assert usage_of({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}) == {"input": 3, "output": 4, "total": 7}


@pytest.mark.parametrize(
    "result",
    [
        None,
        "text",
        [CHAT],
        {"echo": {"usage": CHAT}},
        {"usage": "heavy"},
        {"usage": {}},
        {"usage": {"prompt_tokens": -1, "total_tokens": True}},
        {"body": {"usage": CHAT}},  # a `body` without a `status_code` is the user's own data
        {"status_code": 400, "request_id": "req-3", "body": {"error": {"message": "bad request"}}},
    ],
)
def test_a_result_without_openais_usage_has_none(result: Any) -> None:
    assert usage_of(result) is None


# -- a claim knows each context's batch --------------------------------------------------------


def test_a_claim_and_each_part_of_it_know_the_batch_of_every_context(store: ContextStore) -> None:
    # Given a claim over two batches
    first = store.submit([{"payload": {"i": i}} for i in range(3)])
    second = store.submit([{"payload": {"i": i}} for i in range(3)])
    claim = store.claim(6, "loop")
    assert claim.batch_ids == sorted([first, second])
    assert claim.batch_of == {cid: store.get_context(cid)["batch_id"] for cid in claim.ids}
    # When it is split into partitions (contiguous: the first batch's, then the second's)
    parts = claim.split(2)
    # Then each part knows its contexts' batches, and only theirs
    assert [p.batch_ids for p in parts] == [[first], [second]]
    assert all(p.batch_of == {cid: claim.batch_of[cid] for cid in p.ids} for p in parts)


def test_a_pickled_claim_holds_each_batch_id_once(store: ContextStore) -> None:
    batch_id = store.submit([{"payload": {"i": i}} for i in range(200)])
    claim = store.claim(200, "loop")
    assert pickle.dumps(claim).count(batch_id.encode()) == 1
    assert pickle.loads(pickle.dumps(claim)).batch_of == claim.batch_of


# -- summed into the batch at settle -----------------------------------------------------------


def test_settle_adds_the_usage_of_each_batchs_results_in_one_write(watched: ContextStore, commands: Commands) -> None:
    # Given a claim over two batches
    first = watched.submit([{"payload": {"i": i}} for i in range(3)])
    second = watched.submit([{"payload": {"i": i}} for i in range(2)])
    claim = watched.claim(5, "loop")
    a, b, c, d, e = claim.ids
    # When one write completes four of them (one result without usage) and fails the fifth
    commands.clear()
    report = watched.settle(
        claim,
        results={
            a: chat(10, 1),
            b: {"status_code": 200, "request_id": "r", "body": chat(20, 2)},
            c: "no usage",
            d: chat(5, 5),
        },
        errors={e: ERROR},
        retry_at=None,
    )
    # Then each batch holds the usage of its own completed results
    assert watched.batch_status(first)["usage"] == {"input": 30, "output": 3, "total": 33}
    assert watched.batch_status(second)["usage"] == {"input": 5, "output": 5, "total": 10}
    assert report.usage == {"input": 35, "output": 8, "total": 43}
    # And that took one write to the batches, which also stamped them
    (touch,) = commands.on("update", "batches")
    assert len(touch["updates"]) == 2


def test_usage_accumulates_over_the_settles_of_a_batch(store: ContextStore) -> None:
    batch_id = store.submit([{"payload": {"i": i}} for i in range(4)])
    for _ in range(2):
        claim = store.claim(2, "loop")
        store.complete(claim, dict.fromkeys(claim.ids, chat(7, 3)))
    assert store.batch_status(batch_id)["usage"] == {"input": 28, "output": 12, "total": 40}


def test_a_result_the_lease_lost_adds_no_usage(store: ContextStore) -> None:
    # Given a claim of four whose lease was renewed for two only: the other two ran out, were
    # reaped, and another loop claimed them
    batch_id = store.submit([{"payload": {"i": i}} for i in range(4)])
    late = store.claim(4, "loop-a", lease_seconds=0.5)
    kept, gone = late.ids[:2], late.ids[2:]
    assert store.renew(late.subset(kept), lease_seconds=60) == 2
    expire(late)
    assert store.reap_expired() == 2
    current = store.claim(4, "loop-b")
    assert sorted(current.ids) == sorted(gone)
    # When the first loop writes all four results late
    report = store.complete(late, dict.fromkeys(late.ids, chat(100, 1)))
    # Then only the two it still held count
    assert (report.written, report.lost) == (2, sorted(gone))
    assert report.usage == store.batch_status(batch_id)["usage"] == {"input": 200, "output": 2, "total": 202}
    # And the two the other loop writes count once, as its own
    assert store.complete(current, dict.fromkeys(current.ids, chat(1, 1))).usage["total"] == 4
    assert store.batch_status(batch_id)["usage"] == {"input": 202, "output": 4, "total": 206}


# -- the batch's status ------------------------------------------------------------------------


def test_a_batch_without_usage_shows_zeros(store: ContextStore) -> None:
    batch_id = store.submit([{"payload": {}}])
    claim = store.claim(1, "loop")
    store.complete(claim, {claim.ids[0]: {"echo": 1}})
    status = store.batch_status(batch_id)
    assert status["usage"] == {"input": 0, "output": 0, "total": 0}
    assert read_table(status._repr_html_()).rows["tokens"] == "0 (0 input, 0 output)"


@pytest.fixture
def used(store: ContextStore) -> str:
    """A batch of two completed contexts whose results used 1,200 + 34 tokens; its id."""
    batch_id = store.submit([{"payload": {"i": i}} for i in range(3)])
    claim = store.claim(2, "loop")
    store.complete(claim, {claim.ids[0]: chat(1000, 30), claim.ids[1]: chat(200, 4)})
    return batch_id


def test_the_status_json_of_the_cli_and_the_api_holds_the_usage(
    mongo_uri: str, database: str, api: httpx.Client, used: str
) -> None:
    expected = {"input": 1200, "output": 34, "total": 1234}
    result = CliRunner().invoke(main, ["--mongo-uri", mongo_uri, "--database", database, "status", used, "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["usage"] == expected
    assert api.get(f"/api/batches/{used}").json()["usage"] == expected
    assert [b["usage"] for b in api.get("/api/batches").json()["batches"]] == [expected]


def test_status_prints_a_tokens_line_only_when_tokens_were_used(
    mongo_uri: str, database: str, store: ContextStore, used: str
) -> None:
    def status(batch_id: str) -> str:
        result = CliRunner().invoke(main, ["--mongo-uri", mongo_uri, "--database", database, "status", batch_id])
        assert result.exit_code == 0, result.stderr
        return str(result.stdout)

    assert "  tokens  input 1200  output 34  total 1234\n" in status(used)
    assert "tokens" not in status(store.submit([{"payload": {}}]))


def test_the_batch_table_in_jupyter_has_a_tokens_row(store: ContextStore, used: str) -> None:
    assert read_table(store.batch_status(used)._repr_html_()).rows["tokens"] == "1,234 (1,200 input, 34 output)"


# -- stats: tokens per second over the window ---------------------------------------------------


def test_stats_count_the_tokens_of_the_windows_completed_results(store: ContextStore, used: str) -> None:
    # Given another batch: one result with usage, one failed (a failure's tokens are not known)
    other = store.submit([{"payload": {}} for _ in range(2)])
    claim = store.claim(5, "loop")
    done, failed = [cid for cid in claim.ids if store.get_context(cid)["batch_id"] == other]
    store.settle(claim, results={done: chat(6, 4)}, errors={failed: ERROR}, retry_at=None)
    store.release(claim, [cid for cid in claim.ids if cid not in (done, failed)])

    stats = store.stats(window_seconds=600)
    assert stats["tokens"] == {"input": 1206, "output": 38, "total": 1244}
    assert stats["tokens_per_second"] == pytest.approx(1244 / 600)
    assert ", 2.1 tokens/s, " in repr(stats)
    assert store.stats(used, window_seconds=60)["tokens"] == store.batch_status(used)["usage"]


def test_stats_without_usage_show_zero_tokens(store: ContextStore) -> None:
    store.submit([{"payload": {}}])
    stats = store.stats()
    assert (stats["tokens"], stats["tokens_per_second"]) == ({"input": 0, "output": 0, "total": 0}, 0.0)


def test_a_full_sample_stands_for_every_completed_context_of_the_window() -> None:
    sample = [{"result": chat(3, 1)} for _ in range(10)] + [{"result": "no usage"} for _ in range(10)]
    # A sample short of its size is every context: summed as it is
    assert sampled_tokens(sample, completed=20, full=False) == {"input": 30, "output": 10, "total": 40}
    # A full one is a uniform sample of more: scaled up to their count
    assert sampled_tokens(sample, completed=200, full=True) == {"input": 300, "output": 100, "total": 400}


def test_the_timeline_has_the_tokens_per_second_of_each_bucket(store: ContextStore, used: str) -> None:
    timeline = store.timeline(window_seconds=600, bucket_seconds=60)
    assert timeline["tokens_per_second"].sum() * 60 == pytest.approx(1234)
    assert timeline["tokens_per_second"].iloc[-1] == pytest.approx(1234 / 60)


def test_the_stats_cli_and_api_show_the_tokens(mongo_uri: str, database: str, api: httpx.Client, used: str) -> None:
    result = CliRunner().invoke(main, ["--mongo-uri", mongo_uri, "--database", database, "stats", "--window", "100"])
    assert result.exit_code == 0, result.stderr
    assert "  tokens      input 1200  output 34  total 1234  (12.3/s)" in result.stdout
    answer = api.get("/api/stats", params={"window": 100}).json()
    assert (answer["tokens"]["total"], answer["tokens_per_second"]) == (1234, pytest.approx(12.34))


def test_a_claim_made_by_hand_without_batches_still_settles(store: ContextStore) -> None:
    # A Claim from before batch_of (or built by hand) knows no batches: its results count nothing, and write
    store.submit([{"payload": {}}])
    claim = store.claim(1, "loop")
    bare = Claim(claim.token, claim.owner, claim.expires_at, claim.ids, claim.attempts, claim.batch_ids)
    report = store.complete(bare, {claim.ids[0]: chat(1, 1)})
    assert (report.written, report.usage["total"]) == (1, 0)
