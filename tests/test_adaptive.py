"""`worker.engine_concurrency: auto`: the adaptive limit, fed synthetic latencies (no clock)."""

from __future__ import annotations

from ctxbatch.pipeline.adaptive import AdaptiveLimit

CAPACITY = 40  # calls the synthetic service serves at once; beyond, calls queue


def latency(base: float, in_flight: int) -> float:
    """A service of `base` seconds per call at CAPACITY at once: more in flight wait in its queue."""
    return base * max(1.0, in_flight / CAPACITY)


def feed(limit: AdaptiveLimit, base: float, calls: int) -> list[float]:
    """`calls` calls, each with as many in flight as the limit allows; the limit after each."""
    seen = []
    for _ in range(calls):
        in_flight = int(limit.limit)
        limit.observe(latency(base, in_flight), in_flight)
        seen.append(limit.limit)
    return seen


def test_the_limit_climbs_to_a_fast_services_capacity_and_holds_near_it() -> None:
    # Given a limit starting at its minimum, and a 100 ms service of capacity 40 it does not know
    limit = AdaptiveLimit(4, 256)
    seen = feed(limit, 0.1, 600)
    # Then it climbs past the capacity within two hundred calls, and holds near it, far below the maximum
    assert seen[200] >= CAPACITY
    assert all(CAPACITY <= value <= 2 * CAPACITY for value in seen[200:])


def test_the_limit_falls_when_the_services_latency_triples() -> None:
    # Given a limit that found the capacity of a 100 ms service
    limit = AdaptiveLimit(4, 256)
    before = feed(limit, 0.1, 300)[-1]
    # When every call takes three times as long
    after = feed(limit, 0.3, 100)
    # Then within ten windows of calls the limit is below half of what it was
    assert after[-1] < before / 2


def test_an_overload_halves_the_limit_once_per_window_and_stops_at_the_minimum() -> None:
    # Given a limit of 64
    limit = AdaptiveLimit(8, 256)
    limit.limit = 64.0
    # When a RetryLater comes, and more from the calls that were in flight with it
    for _ in range(10):
        limit.overloaded()
    # Then the limit is halved once for them all
    assert limit.limit == 32
    # And each overload after a window of answers halves it again, never below the minimum
    for _ in range(5):
        for _ in range(int(limit.limit)):
            limit.observe(0.1, 1)
        limit.overloaded()
    assert limit.limit == 8


def test_the_limit_starts_where_a_worker_fills_a_service_within_its_bounds() -> None:
    assert AdaptiveLimit(4, 256).limit == 16
    assert AdaptiveLimit(32, 256).limit == 32
    assert AdaptiveLimit(1, 8).limit == 8


def test_one_slow_answer_in_a_window_does_not_lower_the_limit() -> None:
    # Given a limit that found the capacity of a 100 ms service
    limit = AdaptiveLimit(4, 256)
    before = feed(limit, 0.1, 300)[-1]
    # When one answer in ten takes a second (the worker's thread was held up)
    for i in range(200):
        in_flight = int(limit.limit)
        limit.observe(1.0 if i % 10 == 0 else latency(0.1, in_flight), in_flight)
    # Then the limit stays where the service's latency put it
    assert limit.limit >= 0.8 * before


def test_an_unused_limit_does_not_climb() -> None:
    # Given calls that never fill the limit (a few in flight out of 32)
    limit = AdaptiveLimit(32, 256)
    for _ in range(200):
        limit.observe(0.1, 3)
    # Then the limit stays where it was: nothing showed a higher one would be served
    assert limit.limit == 32


def turned_away(limit: AdaptiveLimit, capacity: int, calls: int) -> int:
    """`calls` answers of a service that serves `capacity` at once in 100 ms and turns the rest away
    (429 with Retry-After, no queue: latency never rises); how many times it turned calls away."""
    overloads = 0
    for _ in range(calls):
        in_flight = int(limit.limit)
        if in_flight > capacity:
            overloads += 1
            limit.overloaded()
        else:
            limit.observe(0.1, in_flight)
    return overloads


def test_against_a_service_that_turns_calls_away_the_limit_holds_below_the_wall() -> None:
    # Given a limit that met a wall of 40 calls once (no latency rise tells it: only the 429s)
    limit = AdaptiveLimit(4, 256)
    turned_away(limit, CAPACITY, 300)
    assert limit.ceiling is not None
    # Then over the next 100 round trips it meets the wall a few times at most, and holds near it
    later = turned_away(limit, CAPACITY, 100 * CAPACITY)
    assert later <= 3
    assert 0.9 * CAPACITY <= limit.limit <= CAPACITY + 1


def test_a_probe_that_meets_the_wall_steps_back_below_it_not_to_half() -> None:
    limit = AdaptiveLimit(4, 256)
    turned_away(limit, CAPACITY, 300)
    turned_away(limit, CAPACITY, 100 * CAPACITY)
    before = limit.limit
    limit.limit = float(CAPACITY + 1)  # a probe above the hold
    limit.overloaded()
    assert limit.limit >= 0.9 * CAPACITY > before / 2


def test_a_service_whose_capacity_grew_is_found_within_a_few_probes() -> None:
    # Given a limit that learnt a wall of 10
    limit = AdaptiveLimit(4, 256)
    turned_away(limit, 10, 300)
    # When the service now serves 60 at once
    turned_away(limit, 60, 60 * 150)
    # Then the doubling probes took it there within 150 round trips
    assert limit.limit >= 50
