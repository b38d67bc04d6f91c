"""Limits shared by every worker of every loop on the database (`limits:`): budgets and Retry-After pauses.

The budget's arithmetic (GCRA) and the token estimate alone; the `limits` collection on a real
server (a race of takes never over-grants); then real loops against a real local service: two loops
under one `requests_per_minute`, a Retry-After that silences every loop, tokens charged from usage.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import Commands, small_run, until
from distributed import Client
from service_app import Script, most_in_window, serve

from ctxbatch import ConfigError, ContextStore, Pipeline, estimate_tokens, load_config
from ctxbatch.config import LimitsSettings
from ctxbatch.engines.http import HttpEngine
from ctxbatch.io.limits import Draw, gcra
from ctxbatch.pipeline.budget import BURST_SECONDS, SLICE_LIFE
from ctxbatch.pipeline.calls import WorkerCalls
from ctxbatch.pipeline.isolate import run_partition
from ctxbatch.pipeline.partition import as_frame
from ctxbatch.pipeline.tokens import used_tokens

CLUSTER = {"n_workers": 2}
# How far ahead of the rate any span of calls may run: the database's burst and a slice's life.
AHEAD_SECONDS = BURST_SECONDS + SLICE_LIFE


# -- the arithmetic -----------------------------------------------------------------------


def test_gcra_grants_a_bursts_worth_ahead_then_says_how_long_to_wait() -> None:
    # Given 10 units a second and a burst of one second's worth, nothing taken yet
    now, tat = 1000.0, 0.0
    # When units are taken one by one at the same moment
    granted = 0
    while (taken := gcra(tat, now, Draw(1, 10), 1.0))[1] == 0:
        tat, granted = taken[0], granted + 1
    # Then a second's worth was granted, and the next unit waits a tenth of a second
    assert granted == 10
    assert tat == pytest.approx(now + 1.0)
    assert taken == (pytest.approx(now + 1.0), pytest.approx(0.1))
    # And a tenth of a second later one more unit is granted
    assert gcra(tat, now + 0.1, Draw(1, 10), 1.0) == (pytest.approx(now + 1.1), 0.0)


def test_gcra_grants_a_take_larger_than_the_burst_only_when_nothing_is_ahead() -> None:
    # Given 500 tokens a second, a burst of half a second, and one call estimated at 1,010 tokens
    now = 1000.0
    call = Draw(1010, 500)
    # Then it is granted at once on an idle budget, moving tat 2.02 s ahead
    tat, wait = gcra(0.0, now, call, 0.5)
    assert (tat, wait) == (pytest.approx(now + 2.02), 0.0)
    # And the next such call waits until nothing is ahead
    assert gcra(tat, now + 1.0, call, 0.5) == (pytest.approx(now + 2.02), pytest.approx(1.02))
    assert gcra(tat, now + 2.02, call, 0.5)[1] == 0.0


def test_a_give_back_lowers_tat_but_never_below_now() -> None:
    now = 1000.0
    # 600 unused tokens at 500/s bring tat 1.2 s nearer
    assert gcra(now + 2.0, now, Draw(0, 500, 600), 0.5)[0] == pytest.approx(now + 0.8)
    # but a give-back larger than what is ahead banks no credit for later
    assert gcra(now + 0.5, now, Draw(0, 500, 5000), 0.5)[0] == pytest.approx(now)
    # and a take rides along: given back, then taken
    assert gcra(now + 2.0, now, Draw(100, 500, 900), 0.5) == (pytest.approx(now + 0.4), 0.0)


def test_estimate_tokens_counts_max_tokens_and_the_text_by_four() -> None:
    chat = {
        "max_tokens": 100,
        "messages": [
            {"role": "system", "content": "x" * 40},
            {"role": "user", "content": [{"type": "text", "text": "y" * 20}, {"type": "image_url"}]},
        ],
    }
    assert estimate_tokens(chat) == 100 + 15
    assert estimate_tokens({"max_completion_tokens": 7, "prompt": ["abcd", "ef"]}) == 7 + 2
    assert estimate_tokens({"input": "a" * 9}) == 3  # rounded up
    assert estimate_tokens({"model": "m"}) == 1  # at least one
    assert estimate_tokens("abcdefgh") == 2


def test_the_http_engine_estimates_the_body_it_sends() -> None:
    settings = load_config({"http": {"url": "http://127.0.0.1:9/", "payload_field": "body"}}).http
    engine = HttpEngine(settings)
    assert engine.tokens({"body": {"max_tokens": 50, "prompt": "abcd"}, "note": "z" * 400}) == 51


def test_usage_is_read_from_an_answer_in_openais_shape() -> None:
    assert used_tokens({"usage": {"total_tokens": 42, "prompt_tokens": 40}}) == 42
    assert used_tokens({"usage": {}}) is None
    assert used_tokens({"usage": {"total_tokens": "42"}}) is None
    assert used_tokens([1, 2]) is None


# -- settings -----------------------------------------------------------------------------


def test_the_limits_section_takes_the_exact_keys() -> None:
    limits = load_config({"limits": {"requests_per_minute": 600, "tokens_per_minute": 30000, "name": "gpt"}}).limits
    assert (limits.requests_per_minute, limits.tokens_per_minute, limits.name) == (600, 30000, "gpt")
    assert load_config({}).limits == LimitsSettings(requests_per_minute=None, tokens_per_minute=None, name="default")
    with pytest.raises(ConfigError, match=r"limits.tokens_per_minute: .*greater than 0"):
        load_config({"limits": {"tokens_per_minute": 0}})
    with pytest.raises(ConfigError, match=r"limits.name"):
        load_config({"limits": {"name": ""}})


def test_rate_limit_per_second_is_read_as_a_shared_requests_per_minute() -> None:
    settings = load_config({"worker": {"rate_limit_per_second": 2.5}, "limits": {"name": "svc"}})
    assert settings.shared_limits == LimitsSettings(requests_per_minute=150, name="svc")
    assert load_config({"limits": {"requests_per_minute": 90}}).shared_limits.requests_per_minute == 90


def test_rate_limit_per_second_and_requests_per_minute_together_are_refused() -> None:
    both = {"worker": {"rate_limit_per_second": 2}, "limits": {"requests_per_minute": 120}}
    with pytest.raises(ConfigError, match=r"worker.rate_limit_per_second and limits.requests_per_minute"):
        load_config(both)


def test_a_run_with_rate_limit_per_second_says_once_that_it_is_deprecated(
    store: ContextStore, caplog: pytest.LogCaptureFixture
) -> None:
    settings = small_run(rate_limit_per_second=3)
    with caplog.at_level(logging.WARNING, logger="ctxbatch.pipeline"):
        Pipeline("tests.engines:echo", settings, store).run(until_empty=True)
    said = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(said) == 1
    assert "worker.rate_limit_per_second is deprecated" in said[0]
    assert "limits.requests_per_minute: 180" in said[0]


# -- the limits collection ----------------------------------------------------------------


def test_takes_racing_from_many_threads_never_grant_more_than_the_budget(store: ContextStore) -> None:
    # Given 10 units a second with a burst of one second, and the clock held still
    now = time.time()
    granted = []

    def take_all() -> None:
        for _ in range(8):
            answer = store.limits.take("race", {"requests": Draw(1, 10)}, 1.0, now=now)
            if answer.granted:
                granted.append(1)

    # When 8 threads take 8 units each at that same moment
    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(take_all) for _ in range(8)]:
            future.result()
    # Then exactly a second's worth was granted, however the compare-and-sets raced
    assert len(granted) == 10
    assert store.limits.limits.find_one({"_id": "race"})["requests"]["tat"] == pytest.approx(now + 1.0, abs=1e-4)


def test_a_take_of_two_kinds_takes_neither_when_one_must_wait(store: ContextStore) -> None:
    now = time.time()
    first = store.limits.take("both", {"requests": Draw(1, 10), "tokens": Draw(1000, 500)}, 0.5, now=now)
    assert first.granted
    second = store.limits.take("both", {"requests": Draw(1, 10), "tokens": Draw(100, 500)}, 0.5, now=now)
    assert not second.granted and second.wait == pytest.approx(2.0 - 0.3, abs=1e-4)
    doc = store.limits.limits.find_one({"_id": "both"})
    assert doc["requests"]["tat"] == pytest.approx(now + 0.1, abs=1e-4)  # the second take's request was not spent


def test_a_pause_only_ever_moves_later(store: ContextStore) -> None:
    assert store.limits.paused_until("svc") == 0.0
    store.limits.pause("svc", 2000.0)
    store.limits.pause("svc", 1500.0)
    assert store.limits.paused_until("svc") == 2000.0
    store.limits.pause("svc", 2500.0)
    assert store.limits.paused_until("svc") == 2500.0


# -- a worker's share ---------------------------------------------------------------------


async def tick(payload: dict[str, Any]) -> int:
    return int(payload["i"])


def test_a_worker_takes_its_budget_in_slices_not_one_write_per_call(watched: ContextStore, commands: Commands) -> None:
    # Given a worker's calls under 3,000 requests a minute (50 a second)
    calls = WorkerCalls()
    limit = calls.shared_limit(watched.limits, LimitsSettings(requests_per_minute=3000))
    rows = as_frame([{"_id": f"c{i}", "payload": {"i": i}, "priority": 0, "attempts": 1} for i in range(100)])
    try:
        started = time.monotonic()
        outcome = run_partition(tick, rows, 16, None, calls, limit)
        took = time.monotonic() - started
    finally:
        calls.close()
    # Then every call ran, paced by the budget (100 calls at 50/s, a second's worth ahead)
    assert len(outcome.results) == 100
    assert took >= 100 / 50 - AHEAD_SECONDS - 0.1
    # And the database saw a few takes per second, not one per call
    writes = commands.on("update", "limits")
    assert 0 < len(writes) <= 100 / 4


# -- real loops against a real service ----------------------------------------------------


def loop_settings(url: str | None = None, **limits: Any) -> dict[str, Any]:
    settings = small_run(retry={"context_retries": 1})
    settings["limits"] = limits
    settings["dask"].update({"processes": False, "n_workers": 2, "threads_per_worker": 1})
    if url:
        settings["http"] = {"url": url, "timeout_seconds": 10}
    return settings


def test_two_loops_under_one_requests_per_minute_stay_within_it_together(
    store: ContextStore, client: Client, loops: Any
) -> None:
    # Given 600 requests a minute (10 a second) shared by a loop in another process and this one
    rate, contexts = 10, 110
    script = Script()
    with serve(script) as url:
        store.submit([{"payload": {"i": i, "url": url}} for i in range(contexts)])
        settings = loop_settings(requests_per_minute=60 * rate)
        other = loops(settings, "tests.engines:async_call_service_signed", "--until-empty")
        until(lambda: len(script.callers) >= 5, "the other loop calls the service")
        # When this loop joins it and both run until the queue is empty
        report = Pipeline("tests.engines:async_call_service_signed", settings, store, client).run(until_empty=True)
        _, said = other.communicate(timeout=60)
        assert other.returncode == 0, said
    # Then both loops made calls, and every context completed
    assert len({pid for _, pid in script.callers}) == 2
    assert 0 < report.completed < contexts
    assert store.status_counts().get("completed") == contexts
    # And in no span did more calls start than the rate and a second's worth
    assert len(script.starts) == len(script.arrivals)
    for window in (1, 2, 5, 10):
        assert most_in_window(script.starts, window) <= rate * (window + AHEAD_SECONDS) + 1, window
    # And together they used the budget: over the whole run at least 80% of the rate
    span = max(script.arrivals) - min(script.arrivals)
    assert contexts / (span + AHEAD_SECONDS) >= 0.8 * rate


def test_a_retry_after_on_one_worker_silences_every_worker_of_every_loop_until_it_passes(
    store: ContextStore, loops: Any
) -> None:
    # Given two loops of two workers each calling a service steadily (20 calls a second between them)
    script = Script(retry_after="3")
    with serve(script) as url:
        store.submit([{"payload": {"i": i, "url": url}} for i in range(200)])
        settings = loop_settings(requests_per_minute=1200)
        running = [loops(settings, "tests.engines:async_call_service_signed", "--until-empty") for _ in range(2)]
        until(lambda: len({pid for _, pid in script.callers}) == 2, "both loops call the service")
        # When the service answers one call 429 with Retry-After: 3
        script.turn_away_next.set()
        until(lambda: script.turned_away, "a call is turned away")
        said = script.turned_away[0]
        # Then, once the pause has reached every worker, no call arrives until the 3 s have passed
        until(lambda: time.monotonic() > said + 3.5, "the Retry-After passes", every=0.1)
        quiet = [t for t in script.arrivals if said + 0.3 < t < said + 3 - 0.1]
        assert quiet == []
        # And then calls resume, from both loops
        until(lambda: len({pid for t, pid in script.callers if t > said + 3}) == 2, "both loops call again")
        for loop in running:
            _, told = loop.communicate(timeout=60)
            assert loop.returncode == 0, told
    assert store.status_counts().get("completed") == 200


def test_tokens_are_charged_from_usage_not_from_the_estimate(store: ContextStore, client: Client) -> None:
    # Given 60,000 tokens a minute (1,000 a second), calls estimated at 410 tokens that use 100
    script = Script(usage=100)
    contexts = 80
    with serve(script) as url:
        store.submit([{"payload": {"i": i, "max_tokens": 400, "prompt": "p" * 40}} for i in range(contexts)])
        settings = loop_settings(url, tokens_per_minute=60_000)
        report = Pipeline("http", settings, store, client).run(until_empty=True)
    assert report.completed == contexts
    # Then the calls ran at what their usage allows (10 a second), far beyond what the estimate would (2.4)
    span = max(script.arrivals) - min(script.arrivals)
    assert contexts / (span + AHEAD_SECONDS) >= 6
    # And the tokens the service counted stayed within the limit in every span
    for window in (1, 2, 5):
        assert most_in_window(script.arrivals, window) * 100 <= 1000 * (window + AHEAD_SECONDS) + 410, window


def test_without_usage_the_estimate_stands(store: ContextStore, client: Client) -> None:
    # Given the same limit, and a service that reports no usage: each call costs its 410-token estimate
    script = Script()
    contexts = 12
    with serve(script) as url:
        store.submit([{"payload": {"i": i, "max_tokens": 400, "prompt": "p" * 40}} for i in range(contexts)])
        report = Pipeline("http", loop_settings(url, tokens_per_minute=60_000), store, client).run(until_empty=True)
    assert report.completed == contexts
    # Then no span saw more than the limit's tokens by the estimate
    for window in (1, 2, 3):
        assert most_in_window(script.arrivals, window) * 410 <= 1000 * (window + AHEAD_SECONDS) + 410, window


def test_with_no_limits_a_worker_only_reads_the_pause_now_and_then(watched: ContextStore, commands: Commands) -> None:
    # Given a worker's calls with no rates set
    calls = WorkerCalls()
    limit = calls.shared_limit(watched.limits, LimitsSettings())
    rows = as_frame([{"_id": f"c{i}", "payload": {"i": i}, "priority": 0, "attempts": 1} for i in range(300)])
    try:
        outcome = run_partition(tick, rows, 16, None, calls, limit)
    finally:
        calls.close()
    # Then every call ran, nothing was written, and the pause was read a handful of times
    assert len(outcome.results) == 300
    assert commands.on("update", "limits") == []
    assert 1 <= len(commands.on("find", "limits")) <= 10


def test_a_pause_written_by_another_loop_holds_this_workers_calls(store: ContextStore) -> None:
    # Given a pause of the limit 1.5 s from now, written as another loop would
    paused_until = time.time() + 1.5
    store.limits.pause("default", paused_until)
    calls = WorkerCalls()
    limit = calls.shared_limit(store.limits, LimitsSettings())
    rows = as_frame([{"_id": f"c{i}", "payload": {"i": i}, "priority": 0, "attempts": 1} for i in range(3)])
    seen: list[float] = []
    lock = threading.Lock()

    async def stamp(payload: dict[str, Any]) -> int:
        with lock:
            seen.append(time.time())
        return int(payload["i"])

    try:
        outcome = run_partition(stamp, rows, 4, None, calls, limit)
    finally:
        calls.close()
    # Then every call ran, none before the pause ended
    assert len(outcome.results) == 3
    assert min(seen) >= paused_until
