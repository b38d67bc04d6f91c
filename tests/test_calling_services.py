"""Engines that call a real local HTTP service: RetryLater defers a context without spending its
retries; `worker.context_timeout_seconds` bounds a call."""

from __future__ import annotations

import asyncio
import gc
import logging
import pickle
import warnings
from typing import Any

import pytest
from conftest import small_run
from distributed import Client
from service_app import Script, most_in_window, serve

from ctxbatch import ConfigError, ContextStore, Pipeline, load_config
from ctxbatch.engines.http import HttpEngine
from ctxbatch.pipeline.engine import configured, resolve_engine
from ctxbatch.pipeline.isolate import run_partition
from ctxbatch.pipeline.partition import as_frame

CLUSTER = {"n_workers": 2}


def config(**retry: Any) -> dict[str, Any]:
    """A small run with one retry per context, which a deferral must not spend."""
    return small_run(retry={"context_retries": 1, **retry})


@pytest.mark.parametrize(
    "engine", ["tests.engines:call_service", "tests.engines:async_call_service", "tests.engines:batch_call_service"]
)
def test_a_service_that_says_retry_later_defers_contexts_without_spending_retries(
    store: ContextStore, client: Client, engine: str
) -> None:
    # Given a service that answers 429 + Retry-After: 1 to the first two calls for every payload,
    # and one retry per context (two 429s would fail a context if they counted as failures)
    script = Script(busy_first=2, retry_after="1")
    with serve(script) as url:
        batch = store.submit([{"payload": {"i": i, "url": url}} for i in range(20)])
        # When the loop runs until the queue is empty
        report = Pipeline(engine, config(), store, client).run(until_empty=True)
    # Then every context completed, deferred twice, its retries unspent
    assert (report.completed, report.failed) == (20, 0)
    docs = list(store.contexts.find({"batch_id": batch}))
    assert {(d["status"], d["attempts"], d["deferrals"]) for d in docs} == {("completed", 1, 2)}
    # And the service saw three calls per payload, each 429 honoured rather than hammered
    assert set(script.calls.values()) == {3}


def test_a_context_deferred_past_max_deferrals_fails_with_the_last_reason(store: ContextStore, client: Client) -> None:
    # Given a service that always answers 429, and at most two deferrals per context
    with serve(Script(busy_first=1_000, retry_after="0")) as url:
        batch = store.submit([{"payload": {"i": i, "url": url}} for i in range(5)])
        report = Pipeline("tests.engines:call_service", config(max_deferrals=2), store, client).run(until_empty=True)
    # Then each context failed after two deferrals, with RetryLater as its error, its retries unspent
    assert report.failed == 5
    docs = list(store.contexts.find({"batch_id": batch}))
    assert {(d["status"], d["attempts"], d["deferrals"], d["error"]["type"]) for d in docs} == {
        ("failed", 1, 2, "RetryLater")
    }


@pytest.mark.parametrize("engine", ["tests.engines:call_service", "tests.engines:async_call_service"])
def test_a_call_that_hangs_fails_its_context_with_a_timeout_and_the_others_complete(
    store: ContextStore, client: Client, engine: str
) -> None:
    # Given a service that never answers payload 3, and a timeout of half a second per call
    settings = config()
    settings["worker"]["context_timeout_seconds"] = 0.5
    with serve(Script(hang_on=3)) as url:
        batch = store.submit([{"payload": {"i": i, "url": url}} for i in range(10)])
        report = Pipeline(engine, settings, store, client).run(until_empty=True)
        # Then that context failed with a TimeoutError after its retry, and the others completed
        assert (report.completed, report.failed) == (9, 1)
        (hung,) = store.contexts.find({"batch_id": batch, "status": "failed"})
    assert (hung["payload"]["i"], hung["error"]["type"], hung["attempts"]) == (3, "TimeoutError", 2)
    assert "context_timeout_seconds" in hung["error"]["message"]
    # And the abandoned call, answered once the service stopped, wrote nothing
    assert "result" not in store.contexts.find_one({"_id": hung["_id"]})


def test_a_batch_engine_past_the_timeout_fails_its_partition_with_a_timeout() -> None:
    # Given a batch engine whose service never answers one row of the partition
    with serve(Script(hang_on=1)) as url:
        frame = as_frame(
            [{"_id": f"c{i}", "payload": {"i": i, "url": url}, "priority": 0, "attempts": 1} for i in range(4)]
        )
        outcome = run_partition("tests.engines:batch_call_service", frame, timeout=0.5)
    # Then every row of the partition failed with a TimeoutError, without bisecting
    assert outcome.results == {}
    assert {e["type"] for e in outcome.errors.values()} == {"TimeoutError"}
    assert len(outcome.errors) == 4


def http_config(url: str, **retry: Any) -> dict[str, Any]:
    settings = config(**retry)
    settings["http"] = {"url": url, "headers": {"X-Key": "${CTXBATCH_TEST_KEY}"}, "timeout_seconds": 5}
    return settings


def test_the_http_engine_defers_on_429_and_fails_a_bad_request_at_once(
    store: ContextStore, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a service that answers 429 to the first call of every payload and 400 to payload 4
    monkeypatch.setenv("CTXBATCH_TEST_KEY", "k")
    script = Script(busy_first=1, retry_after="0", bad_on=4)
    with serve(script) as url:
        batch = store.submit([{"payload": {"i": i}} for i in range(10)])
        report = Pipeline("http", http_config(url, context_retries=2), store, client).run(until_empty=True)
    # Then the others completed with the service's JSON, deferred once, their retries unspent
    assert (report.completed, report.failed) == (9, 1)
    done = list(store.contexts.find({"batch_id": batch, "status": "completed"}))
    assert {(d["attempts"], d["deferrals"]) for d in done} == {(1, 1)}
    assert all(d["result"] == {"i": d["payload"]["i"]} for d in done)
    # And the bad request failed on its first try, with the status and the body in its error
    (bad,) = store.contexts.find({"batch_id": batch, "status": "failed"})
    assert (bad["payload"]["i"], bad["attempts"], bad["error"]["type"]) == (4, 1, "FailNow")
    assert "HTTP 400" in bad["error"]["message"] and "field i is odd today" in bad["error"]["message"]
    assert script.calls[4] == 1


def test_the_http_engine_fails_a_payload_without_its_payload_field_at_once(
    store: ContextStore, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the http engine sending each payload's `request`, and one payload that has none
    monkeypatch.setenv("CTXBATCH_TEST_KEY", "k")
    script = Script()
    with serve(script) as url:
        settings = http_config(url, context_retries=2)
        settings["http"]["payload_field"] = "request"
        batch = store.submit([{"payload": {"request": {"i": 1}}}, {"payload": {"i": 2}}])
        report = Pipeline("http", settings, store, client).run(until_empty=True)
    # Then the one with a request completed, and the other failed on its first try, never sent
    assert (report.completed, report.failed, report.retried) == (1, 1, 0)
    (bad,) = store.contexts.find({"batch_id": batch, "status": "failed"})
    assert (bad["attempts"], bad["error"]["type"]) == (1, "FailNow")
    assert "no field 'request'" in bad["error"]["message"]
    assert script.calls == {1: 1}


def test_the_http_engine_sums_the_services_usage_into_the_batch(
    store: ContextStore, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a service that answers each payload i as a chat completion of 10 + i prompt and i completion tokens
    monkeypatch.setenv("CTXBATCH_TEST_KEY", "k")
    with serve(Script(chat_usage=True)) as url:
        batch = store.submit([{"payload": {"i": i}} for i in range(30)])
        report = Pipeline("http", http_config(url), store, client).run(until_empty=True)
    # Then the batch's usage is what the service reported, summed
    assert report.completed == 30
    prompt, completion = sum(10 + i for i in range(30)), sum(range(30))
    assert store.batch_status(batch)["usage"] == {"input": prompt, "output": completion, "total": prompt + completion}


def _http_clients(url: str, dask_worker: Any) -> list[int]:
    """The sessions of the http engines set up on this worker to call `url` (earlier tests' stay set up)."""
    engines = dask_worker.plugins["ctxbatch"]._engines.values()
    return [id(e.fn._session) for e in engines if e.name == "http" and e.fn.settings.url == url and e.fn._session]


def test_the_http_engine_makes_one_client_per_worker(
    store: ContextStore, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run of the http engine over many partitions on two workers
    monkeypatch.setenv("CTXBATCH_TEST_KEY", "k")
    with serve(Script()) as url:
        store.submit([{"payload": {"i": i}} for i in range(60)])
        report = Pipeline("http", http_config(url), store, client).run(until_empty=True)
    assert report.completed == 60
    # Then each worker set the engine up once: one client each, shared by all its partitions
    clients = client.run(_http_clients, url)
    assert sorted(len(found) for found in clients.values()) == [1, 1]
    assert len({found[0] for found in clients.values()}) == 2


def test_the_http_engine_refuses_a_header_naming_a_missing_variable(store: ContextStore) -> None:
    # Given a header that names an environment variable nobody set
    settings = http_config("http://127.0.0.1:9/")
    settings["http"]["headers"] = {"Authorization": "Bearer ${CTXBATCH_NOT_SET_ANYWHERE}"}
    # Then the loop refuses to start, naming the header and the variable
    with pytest.raises(ConfigError, match=r"http.headers.Authorization: .*CTXBATCH_NOT_SET_ANYWHERE"):
        Pipeline("http", settings, store)


@pytest.mark.parametrize(
    ("engine", "contexts"), [("tests.engines:async_call_service", 200), ("tests.engines:call_service", 100)]
)
def test_a_rate_limit_per_second_is_a_shared_budget_for_the_calls_of_all_workers(
    store: ContextStore, client: Client, engine: str, contexts: int
) -> None:
    # Given the deprecated limit of 20 calls per second, read as 1,200 requests a minute over the run's two workers
    settings = config()
    settings["worker"]["rate_limit_per_second"] = 20
    script = Script()
    with serve(script) as url:
        store.submit([{"payload": {"i": i, "url": url}} for i in range(contexts)])
        report = Pipeline(engine, settings, store, client).run(until_empty=True)
    # Then every context completed, none refused, and the calls took as long as the limit says
    assert (report.completed, report.failed) == (contexts, 0)
    assert max(script.arrivals) - min(script.arrivals) >= contexts / 20 - 1
    # And in no span did the service see more than the limit and a second's worth (the budget's burst and a
    # slice's life), give or take one call arriving at the edge of a window
    for window in (1, 2, 5):
        assert most_in_window(script.arrivals, window) <= 20 * (window + 1) + 1, window
    # And the budget is in the database, where every loop of the same limit name draws from it
    assert store.limits.limits.find_one({"_id": "default"})["requests"]["tat"] > 0


async def _connector_limits(engine: HttpEngine) -> tuple[int, int]:
    await engine.setup()
    assert engine._session is not None
    limits = (engine._session.connector.limit, engine._session.connector.limit_per_host)  # type: ignore[union-attr]
    await engine.teardown()
    return limits


@pytest.mark.parametrize(
    ("worker", "connections"),
    [({"engine_concurrency": 7}, 7), ({"engine_concurrency": "auto", "max_engine_concurrency": 50}, 50)],
)
def test_the_http_engines_connections_follow_the_workers_calls_in_flight(
    worker: dict[str, Any], connections: int
) -> None:
    # Given the http engine configured for a worker limit, and shipped to a worker as Dask ships it
    settings = load_config({"worker": worker, "http": {"url": "http://127.0.0.1:9/"}})
    shipped = pickle.loads(pickle.dumps(configured(resolve_engine("http"), settings).fn))
    # When a worker sets it up, then its session holds at most that many connections, to any host and in all
    assert asyncio.run(_connector_limits(shipped)) == (connections, connections)


def test_the_http_engine_without_a_worker_leaves_no_session_open(caplog: pytest.LogCaptureFixture) -> None:
    # Given the http engine run over partitions as a notebook runs it: no worker, a fresh loop each time
    with serve(Script()) as url:
        engine = configured(resolve_engine("http"), load_config({"http": {"url": url}}))
        frame = as_frame([{"_id": f"c{i}", "payload": {"i": i}, "priority": 0, "attempts": 1} for i in range(8)])
        gc.collect()  # what earlier tests left for the collector warns now, not below
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.ERROR, logger="asyncio"):
            warnings.simplefilter("always")
            outcomes = [run_partition(engine, frame, concurrency=4) for _ in range(2)]
            gc.collect()  # a session left open says so when it is collected
    # Then every call was answered, and nothing warned of a session or connection left open
    assert all(outcome.results == {f"c{i}": {"i": i} for i in range(8)} for outcome in outcomes)
    # (aiohttp's own words for a session or connector left open; a bare socket's warning may be any
    # earlier test's, collected here)
    left_open = ("Unclosed client session", "Unclosed connector")
    assert [str(w.message) for w in caught if str(w.message).startswith(left_open)] == []
    assert not any(words in caplog.text for words in left_open)
