"""The sizers, driven by synthetic observations: no clock, no cluster, no database.

A synthetic workload says how long a batch of n contexts takes (plus seeded noise); the sizer
plans, the "batch" takes that long, the sizer observes. Everything is deterministic per seed.
"""

from __future__ import annotations

import itertools
import logging
import random
import statistics
import subprocess
import sys
import textwrap
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest

from ctxbatch.config import WorkerSettings
from ctxbatch.errors import ConfigError
from ctxbatch.sizing import (
    DynamicSizer,
    FixedSizer,
    Observation,
    Plan,
    Readings,
    Sizer,
    WorkerScaler,
    partitions_for,
    resolve_sizer,
    wanted_workers,
)
from ctxbatch.sizing.cost import DurationModel
from ctxbatch.sizing.history import History

Curve = Callable[[int, int], float]  # (size, batch index) -> wall seconds


def peaked(size: int, _: int) -> float:
    """1 s per batch, 0.5 ms per context, and a penalty that grows with size: best size 600."""
    return 1.0 + 0.0005 * size + size * size / 360_000


BEST = max(range(1, 5000), key=lambda n: n / peaked(n, 0))


def settings(batch_size: int = 10, low: int = 5, high: int = 2000, **more: float) -> WorkerSettings:
    return WorkerSettings(batch_size=batch_size, min_batch_size=low, max_batch_size=high, **more)


def readings(memory: float | None = 0.3, cpu: float | None = 0.5, in_flight: int = 0) -> Readings:
    return Readings(memory, cpu, None, None, 0.001, in_flight, threads=4, workers=2)


class Workload:
    """Drives a sizer: plan, run the synthetic batch, observe; `depth` batches in flight."""

    def __init__(self, sizer: Sizer, curve: Curve, *, noise: float = 0.05, seed: int = 0, depth: int = 1) -> None:
        self.sizer = sizer
        self.curve = curve
        self.noise = noise
        self.rng = random.Random(seed)
        self.depth = depth
        self.sizes: list[int] = []
        self.index = 0
        self._in_flight: deque[tuple[Plan, Readings]] = deque()

    def run(
        self,
        batches: int,
        *,
        memory: float | None = 0.3,
        cpu: float | None = 0.5,
        error_rate: float = 0.0,
        critical: bool = False,
        held: Callable[[int], int] | None = None,
        lost: int = 0,
    ) -> list[int]:
        """Run `batches` batches under these conditions; the sizes planned."""
        planned = []
        for _ in range(batches):
            now = readings(memory, cpu, len(self._in_flight))
            plan = self.sizer.plan(now)
            planned.append(plan.size)
            self._in_flight.append((plan, now))
            if len(self._in_flight) >= self.depth:
                self._finish(error_rate, critical, held, lost)
            self.index += 1
        self.sizes += planned
        return planned

    def _finish(self, error_rate: float, critical: bool, held: Callable[[int], int] | None, lost: int) -> None:
        plan, then = self._in_flight.popleft()
        contexts = held(plan.size) if held else plan.size
        seconds = self.curve(contexts, self.index) * (1 + self.rng.gauss(0, self.noise))
        self.sizer.observe(
            Observation(
                contexts=contexts,
                planned=plan.size,
                wall_seconds=seconds,
                partition_seconds=[seconds / plan.partitions] * plan.partitions,
                errors=round(contexts * error_rate),
                critical=critical,
                readings=then,
                lost=lost,
            )
        )


def moves(sizes: list[int]) -> int:
    return sum(1 for a, b in itertools.pairwise(sizes) if a != b)


def settled(work: Workload) -> int:
    """The size held lately (the last batch may be a probe)."""
    return statistics.mode(work.sizes[-10:])


def near_best(size: int) -> bool:
    return abs(size - BEST) <= 0.25 * BEST


def converged(seed: int = 0, depth: int = 1, batches: int = 60) -> Workload:
    work = Workload(DynamicSizer(settings()), peaked, seed=seed, depth=depth)
    work.run(batches)
    return work


# -- the dynamic controller ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_dynamic_converges_near_the_best_size(seed: int) -> None:
    work = converged(seed)

    assert near_best(settled(work))


@pytest.mark.parametrize("seed", range(3))
def test_dynamic_converges_with_three_batches_in_flight(seed: int) -> None:
    work = converged(seed, depth=3, batches=90)

    assert near_best(settled(work))


def test_dynamic_starts_at_batch_size_within_bounds() -> None:
    assert DynamicSizer(settings(batch_size=10, low=5)).plan(readings()).size == 10
    assert DynamicSizer(settings(batch_size=1, low=5)).plan(readings()).size == 5
    assert DynamicSizer(settings(batch_size=50, high=20)).plan(readings()).size == 20


def test_dynamic_leaves_its_start_size_after_min_samples() -> None:
    # Short batches at the start size (0.1 s each, far under min_seconds): nothing to compare them
    # with, so min_samples of them set the reference and the search moves on.
    work = Workload(DynamicSizer(settings()), lambda n, i: 0.09 + 0.001 * n)

    work.run(3)

    assert work.sizes == [10, 10, 20]


def test_dynamic_never_leaves_its_bounds() -> None:
    rng = random.Random(4)
    for case in range(40):
        low = rng.randint(1, 50)
        high = rng.randint(low, 3000)
        fixed, per_context, knee = rng.uniform(0, 3), rng.uniform(1e-5, 1e-2), rng.uniform(10, 4000)

        def curve(n: int, i: int, f: float = fixed, c: float = per_context, k: float = knee) -> float:
            return f + c * n + (n / k) ** 2

        work = Workload(
            DynamicSizer(settings(rng.randint(1, 4000), low, high)), curve, seed=case, depth=rng.randint(1, 3)
        )
        for _ in range(12):
            work.run(
                rng.randint(1, 10),
                memory=rng.choice([0.2, 0.5, 0.95, None]),
                cpu=rng.choice([0.3, 0.99, None]),
                error_rate=rng.choice([0.0, 0.0, 0.5]),
                critical=rng.random() < 0.1,
                held=rng.choice([None, lambda n: max(1, n // 3)]),
            )
        assert all(low <= size <= high for size in work.sizes), (case, low, high, work.sizes)


def test_dynamic_shrinks_under_memory_pressure() -> None:
    work = converged()
    before = settled(work)

    work.run(3, memory=0.9)

    assert work.sizes[-1] <= before / 4
    assert "memory 0.90 > 0.8 -> halve" in work.sizer.decisions[-1].reason


def test_dynamic_recovers_after_memory_pressure() -> None:
    work = converged()
    work.run(4, memory=0.9)

    work.run(30, memory=0.3)

    assert near_best(settled(work))


def test_dynamic_memory_threshold_follows_the_settings() -> None:
    work = Workload(DynamicSizer(settings(batch_size=400, memory_high_fraction=0.95)), peaked)

    work.run(5, memory=0.9)

    assert work.sizes[-1] >= 400


def test_dynamic_keeps_its_size_through_a_burst_of_failed_rows() -> None:
    # Given a converged size
    work = converged()
    before = settled(work)

    # When half the rows of three batches fail (isolated rows, FailNow, or RetryLater deferrals)
    work.run(3, error_rate=0.5)

    # Then no batch shrinks for them: a smaller batch would fail the same share of its rows
    assert work.sizes[-3:] == [before] * 3
    assert not any("errors" in d.reason or "halve" in d.reason for d in work.sizer.decisions[-3:])


def test_dynamic_shrinks_when_leases_expire_and_recovers() -> None:
    # Given a converged size
    work = converged()
    before = settled(work)

    # When batches lose contexts to expired leases (their renewals fell behind)
    work.run(2, lost=5)
    shrunk = work.sizes[-1]
    work.run(30)

    # Then the size halves, says why, and climbs back once the leases hold
    assert shrunk <= before / 2
    assert any("lost to an expired lease" in d.reason for d in work.sizer.decisions)
    assert near_best(settled(work))


def test_dynamic_halves_on_a_critical_failure() -> None:
    work = converged()
    before = work.sizes[-1]

    work.run(1, critical=True)
    work.run(1)

    assert work.sizes[-1] == before // 2
    assert "critical failure -> halve" in work.sizer.decisions[-1].reason


def test_dynamic_backs_off_once_per_round_of_batches_in_flight() -> None:
    # Given three batches in flight at the converged size
    work = converged(depth=3, batches=90)
    before = work.sizes[-1]

    # When one burst of critical failures stops all three
    work.run(3, critical=True)

    # Then the size is halved once, not once per failed batch
    assert work.sizes[-1] == before // 2


def test_dynamic_tolerates_a_steady_error_rate() -> None:
    # Rows that always fail (bad data) are no load signal: after adjusting to the usual rate,
    # the size climbs as without errors.
    work = Workload(DynamicSizer(settings()), peaked)

    work.run(60, error_rate=0.2)

    assert near_best(settled(work))


@pytest.mark.parametrize("seed", range(10))
def test_dynamic_does_not_oscillate_on_a_flat_curve(seed: int) -> None:
    # Throughput is the same at every size: no size is better than another. The first climb
    # and a probe or two (there and back) are all the moves there should be.
    work = Workload(DynamicSizer(settings()), lambda n, i: 0.01 * n, seed=seed)

    work.run(50)

    assert moves(work.sizes) <= 6


def test_dynamic_caps_size_so_batches_stay_near_the_target_after_a_cost_jump() -> None:
    # Given a cheap workload that saturates, held at a size well under the 10 s target
    def jumps(n: int, i: int) -> float:
        return 0.3 + (0.002 if i < 40 else 0.02) * n

    work = Workload(DynamicSizer(settings(high=10_000)), jumps)
    work.run(40)

    # When the cost per context jumps 10x
    work.run(30)

    # Then the size comes down until a batch is predicted to take about the target
    final = work.sizes[-1]
    assert 0.8 * 10 <= jumps(final, 99) <= 1.1 * 10
    assert any("> target 10 s -> cap at" in d.reason for d in work.sizer.decisions[40:])


def test_dynamic_climbs_no_further_than_the_target_duration() -> None:
    # 5 s per batch and 25 ms per context: 200 contexts fill the 10 s target, and throughput
    # would keep rising well past it.
    work = Workload(DynamicSizer(settings()), lambda n, i: 5 + 0.025 * n)

    work.run(40)

    assert all(5 + 0.025 * size <= 1.1 * 10 for size in work.sizes)
    assert work.sizes[-1] >= 180


def test_dynamic_does_not_read_short_batches_as_bigger_is_worse() -> None:
    # Given a sizer converged on the best size
    work = converged()
    before = work.sizes[-1]

    # When the queue runs dry and batches hold a tenth of what was planned
    work.run(30, held=lambda n: max(1, n // 10))

    # Then the size stays, and the decisions say why
    assert work.sizes[-1] == before
    assert "batch held" in work.sizer.decisions[-1].reason


def test_dynamic_ends_a_climb_on_the_smaller_size_when_cpu_is_saturated_and_throughput_flat() -> None:
    # Throughput is flat from 40 on: past that, a bigger batch only holds the CPU longer.
    def saturating(n: int, i: int) -> float:
        return n / min(n, 40)

    cool = Workload(DynamicSizer(settings()), saturating, noise=0.01)
    hot = Workload(DynamicSizer(settings()), saturating, noise=0.01)

    cool.run(12, cpu=0.5)
    hot.run(12, cpu=0.97)

    assert hot.sizes[-1] < cool.sizes[-1]
    assert any("saturated and throughput flat" in d.reason for d in hot.sizer.decisions)


def test_dynamic_is_deterministic_given_the_same_observations() -> None:
    first, second = converged(seed=3), converged(seed=3)

    assert first.sizer.decisions == second.sizer.decisions


def test_dynamic_records_each_decision_with_its_reason_and_inputs() -> None:
    work = converged(batches=20)
    decisions = work.sizer.decisions

    assert [d.batch for d in decisions] == list(range(1, 21))
    assert [d.size for d in decisions] == work.sizes
    assert any(d.reason.startswith("throughput up") and "-> climb to" in d.reason for d in decisions)
    assert all(d.reason and "\n" not in d.reason for d in decisions)
    last = decisions[-1].as_row()
    assert {"batch", "size", "partitions", "reason", "throughput", "predicted_seconds", "memory"} <= set(last)


def test_decisions_are_logged_at_debug_on_the_sizing_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ctxbatch.sizing")

    converged(batches=5)

    records = [r for r in caplog.records if r.name == "ctxbatch.sizing"]
    assert len(records) == 5
    assert all(r.levelno == logging.DEBUG for r in records)
    assert "batch 5: size" in records[-1].getMessage()


# -- the fixed sizer and the template -----------------------------------------------------


def test_fixed_sizer_always_plans_batch_size() -> None:
    work = Workload(FixedSizer(settings(batch_size=7, low=10, high=20)), peaked)

    work.run(5)
    work.run(3, memory=0.99, error_rate=0.9, critical=True)

    assert work.sizes == [7] * 8


def test_fixed_sizer_splits_by_threads_until_the_cost_is_known() -> None:
    sizer = FixedSizer(settings(batch_size=1000))

    assert sizer.plan(readings()).partitions == 4  # readings() has 4 threads
    sizer.observe(Observation(1000, 1000, 2.0, [0.01] * 4, 0, False, readings()))
    assert sizer.plan(readings()).partitions == 1  # 0.04 s of work in all


class Wild(Sizer):
    """A user's sizer that asks for whatever it is given."""

    def __init__(self, settings: WorkerSettings, wanted: int | None) -> None:
        super().__init__(settings)
        self.wanted = wanted

    def _next_size(self, readings: Readings) -> int:
        if self.wanted is None:
            raise RuntimeError("broken strategy")
        return self.wanted

    def _observe(self, observation: Observation) -> None:
        raise RuntimeError("broken observer")


def test_plan_clamps_a_strategy_to_the_bounds_and_says_so() -> None:
    sizer = Wild(settings(low=5, high=20), wanted=10_000)

    plan = sizer.plan(readings())

    assert plan.size == 20
    assert "clamped to 20 (bounds 5..20)" in sizer.decisions[-1].reason


def test_a_strategy_that_raises_keeps_the_last_size(caplog: pytest.LogCaptureFixture) -> None:
    sizer = Wild(settings(low=5, high=20), wanted=12)
    sizer.plan(readings())
    sizer.wanted = None

    plan = sizer.plan(readings())
    sizer.observe(Observation(12, 12, 1.0, [1.0], 0, False, readings()))

    assert plan.size == 12
    assert "sizer failed (RuntimeError: broken strategy) -> keep 12" in sizer.decisions[-1].reason
    assert sum("failed to" in r.getMessage() for r in caplog.records) == 2


def test_plan_partitions_never_exceed_the_size() -> None:
    sizer = FixedSizer(settings(batch_size=3))

    assert sizer.plan(Readings(None, None, None, None, None, 0, threads=64, workers=8)) == Plan(3, 3)


class Sequence(Sizer):
    """Plans the given sizes in turn."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__(settings(low=1, high=10_000))
        self.sizes = iter(sizes)

    def _next_size(self, readings: Readings) -> int:
        return next(self.sizes)


def test_a_batch_planned_beside_one_of_another_size_is_flagged_when_observed() -> None:
    # Given a batch of 10 in flight when one of 20 is planned
    sizer = Sequence([10, 20])
    sizer.plan(readings(in_flight=0))
    sizer.plan(readings(in_flight=1))
    flags = []

    # When both are observed
    for planned in (10, 20):
        sizer.observe(Observation(planned, planned, 1.0, [1.0], 0, False))
        flags.append(sizer.ran_beside)

    # Then only the second shared its threads with a batch of another size
    assert flags == [False, True]


def test_dynamic_does_not_measure_a_batch_that_ran_beside_another_size() -> None:
    work = Workload(DynamicSizer(settings()), peaked, depth=2)

    work.run(12)

    assert any("ran beside one of another size" in d.reason for d in work.sizer.decisions)


# -- resolve_sizer ------------------------------------------------------------------------


def test_resolve_none_follows_dynamic_batch_sizing() -> None:
    assert isinstance(resolve_sizer(None, WorkerSettings()), DynamicSizer)
    assert isinstance(resolve_sizer(None, WorkerSettings(dynamic_batch_sizing=False)), FixedSizer)


def test_resolve_none_prefers_the_configured_sizer() -> None:
    assert isinstance(resolve_sizer(None, WorkerSettings(sizer="fixed")), FixedSizer)


def test_resolve_aliases() -> None:
    assert isinstance(resolve_sizer("fixed", WorkerSettings()), FixedSizer)
    assert isinstance(resolve_sizer("dynamic", WorkerSettings(dynamic_batch_sizing=False)), DynamicSizer)


def test_resolve_passes_a_sizer_through() -> None:
    sizer = FixedSizer(WorkerSettings())

    assert resolve_sizer(sizer, WorkerSettings()) is sizer


def test_resolve_calls_a_callable_with_the_settings() -> None:
    worker = WorkerSettings(batch_size=42)

    sizer = resolve_sizer(FixedSizer, worker)

    assert isinstance(sizer, FixedSizer)
    assert sizer.settings is worker


def test_resolve_imports_module_callable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_sizers.py").write_text(
        textwrap.dedent(
            """
            from ctxbatch.sizing import FixedSizer

            def halved(settings):
                return FixedSizer(settings.model_copy(update={"batch_size": settings.batch_size // 2}))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    sizer = resolve_sizer("my_sizers:halved", WorkerSettings(batch_size=40))

    assert sizer.plan(readings()).size == 20


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nonsense", "unknown sizer 'nonsense'; expected 'fixed', 'dynamic', 'module:callable'"),
        ("no_such_module_here:make", "cannot import 'no_such_module_here'"),
        ("ctxbatch.sizing:no_such_sizer", "has no attribute 'no_such_sizer'"),
        ("ctxbatch.sizing.split:MIN_PARTITION_SECONDS", "not a callable"),
        ("ctxbatch.sizing:partitions_for", "ctxbatch.sizing:partitions_for(settings) failed: TypeError"),
        (42, "got int"),
    ],
)
def test_resolve_refuses_what_is_not_a_sizer(spec: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_sizer(spec, WorkerSettings())  # type: ignore[arg-type]

    assert caught.value.key == "worker.sizer"
    assert message in str(caught.value)


def test_resolve_refuses_a_factory_that_returns_no_sizer() -> None:
    with pytest.raises(ConfigError, match=r"returned dict, not a ctxbatch\.sizing\.Sizer"):
        resolve_sizer(lambda settings: {}, WorkerSettings())  # type: ignore[arg-type,return-value]


# -- splitting ----------------------------------------------------------------------------


def test_partitions_one_per_thread_while_the_cost_is_unknown() -> None:
    assert partitions_for(1000, 6, None) == 6


def test_partitions_never_more_than_contexts() -> None:
    assert partitions_for(3, 8, None) == 3
    assert partitions_for(3, 8, 10.0) == 3


def test_partitions_carry_at_least_a_tenth_of_a_second_of_work() -> None:
    # 100 contexts of 2 ms: 0.2 s of work, so two partitions, not one per thread.
    assert partitions_for(100, 8, 0.002) == 2


def test_partitions_at_most_two_per_thread() -> None:
    assert partitions_for(10_000, 4, 1.0) == 8


def test_partitions_one_per_thread_beside_other_batches_in_flight() -> None:
    # The other batches' partitions keep a thread busy once this batch's is done.
    assert partitions_for(10_000, 4, 1.0, in_flight=1) == 4


def test_partitions_at_least_one() -> None:
    assert partitions_for(1, 1, 0.0) == 1
    assert partitions_for(50, 0, 1e-9) == 1


def test_partitions_refuse_an_empty_batch() -> None:
    with pytest.raises(ValueError, match="at least one context"):
        partitions_for(0, 4, None)


# -- the duration model -------------------------------------------------------------------


def test_duration_model_separates_fixed_and_per_context_cost() -> None:
    model = DurationModel()
    for n in (10, 20, 40, 80):
        model.add(n, 2.0 + 0.01 * n)

    fixed, per_context = model.fit() or (0, 0)

    assert fixed == pytest.approx(2.0)
    assert per_context == pytest.approx(0.01)
    assert model.largest_within(10.0) == 800


def test_duration_model_at_one_size_uses_the_average() -> None:
    model = DurationModel()
    for _ in range(5):
        model.add(100, 3.0)

    assert model.fit() == (0.0, pytest.approx(0.03))


# -- the throughput history ---------------------------------------------------------------


def test_history_places_the_peak_between_the_measured_sizes() -> None:
    history = History(alpha=0.25)
    for size in (160, 320, 640, 1280):
        history.level(size).add(size, peaked(size, 0), alpha=0.25)

    size, how = history.peak([160, 320, 640, 1280]) or (0, "")

    assert abs(size - BEST) <= 0.1 * BEST
    assert how.startswith("peak near")


def test_history_peak_at_the_edge_is_the_best_measured() -> None:
    history = History(alpha=0.25)
    for size in (10, 20, 40):
        history.level(size).add(size, peaked(size, 0), alpha=0.25)

    assert history.peak([10, 20, 40]) == (40, "best measured 40")


# -- worker scaling -----------------------------------------------------------------------


def test_wanted_workers_drain_the_queue_within_the_horizon() -> None:
    # 3,000 pending at 10/s per worker: 3 target durations of 10 s need 10 workers.
    assert wanted_workers(3000, 10.0, current=2, minimum=1, maximum=50, target_seconds=10) == 10


def test_wanted_workers_stay_within_bounds() -> None:
    assert wanted_workers(10**9, 1.0, current=2, minimum=1, maximum=8, target_seconds=10) == 8
    assert wanted_workers(1, 1000.0, current=5, minimum=2, maximum=8, target_seconds=10) == 2


def test_wanted_workers_with_an_empty_queue_is_the_minimum() -> None:
    assert wanted_workers(0, 10.0, current=6, minimum=1, maximum=8, target_seconds=10) == 1


def test_wanted_workers_with_the_rate_unknown_is_the_current_count() -> None:
    assert wanted_workers(5000, None, current=3, minimum=1, maximum=8, target_seconds=10) == 3
    assert wanted_workers(5000, None, current=30, minimum=1, maximum=8, target_seconds=10) == 8


def test_worker_scaler_scales_up_at_once_and_down_after_patience() -> None:
    scaler = WorkerScaler(1, 8, target_seconds=10, patience=3)
    # One worker of 2 threads did 200 contexts in 10 thread-seconds: 40 contexts/s per worker.
    scaler.observe(Observation(200, 200, 6.0, [5.0, 5.0], 0, False, Readings(None, None, None, None, None, 0, 2, 1)))

    assert scaler.per_worker_rate == pytest.approx(40.0)
    assert scaler.want(pending=4800, current=1) == 4
    assert [scaler.want(pending=0, current=4) for _ in range(3)] == [4, 4, 1]


def test_a_sizer_from_the_current_directory_resolves_in_a_fresh_process(tmp_path: Path) -> None:
    # Given mymod.py in the current directory, and a process whose sys.path does not start with it
    # (-P: as under the `ctxbatch` console script), which has resolved no engine first
    (tmp_path / "mymod.py").write_text(
        "from ctxbatch.sizing import FixedSizer\n\n\nclass MySizer(FixedSizer):\n    pass\n"
    )
    script = (
        "from ctxbatch.config import WorkerSettings\n"
        "from ctxbatch.sizing import resolve_sizer\n"
        "print(type(resolve_sizer('mymod:MySizer', WorkerSettings())).__name__)\n"
    )
    # When it resolves `worker.sizer: mymod:MySizer`
    done = subprocess.run(
        [sys.executable, "-P", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    # Then the sizer is found there
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "MySizer"


# -- an async engine's window ---------------------------------------------------------------


def window_readings(window: int) -> Readings:
    return Readings(0.3, 0.5, None, None, 0.001, 0, threads=2, workers=2, window=window)


@pytest.mark.parametrize("sizer", [DynamicSizer, FixedSizer])
def test_with_no_sizes_configured_a_batch_holds_the_async_engines_window(sizer: type[Sizer]) -> None:
    # Given the default worker settings (batches of 10, 5..20) and an async engine allowing 128 calls in flight
    planner = sizer(WorkerSettings())

    plan = planner.plan(window_readings(128))

    # Then the batch holds the whole window, and the decision says so
    assert plan.size >= 128
    assert "window of 128 calls" in planner.decisions[-1].reason
    assert planner.decisions[-1].inputs["window"] == 128


def test_a_dynamic_batch_follows_the_window_as_the_limits_change() -> None:
    planner = DynamicSizer(WorkerSettings())
    assert planner.plan(window_readings(32)).size == 32
    assert planner.plan(window_readings(96)).size == 96  # the workers' limits climbed
    assert planner.plan(window_readings(0)).size <= 20  # a row engine: the configured bounds again


@pytest.mark.parametrize("sizer", [DynamicSizer, FixedSizer])
def test_configured_batch_sizes_are_honoured_under_a_larger_window(sizer: type[Sizer]) -> None:
    # Given a config that sets its batch sizes (the seed's sample: at most 20)
    planner = sizer(WorkerSettings.model_validate({"batch_size": 10, "max_batch_size": 20}))

    # Then the window does not change them
    assert planner.plan(window_readings(128)).size <= 20
