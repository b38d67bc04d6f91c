"""A sizer that remembers (issue 22), driven by synthetic observations: no clock, no cluster, no database.

What one sizer learned (`remember()`) is what the next one starts from (`resume()`); how runs keep
it in the database is tested on the real loop in test_sizing_history.py.
"""

from __future__ import annotations

from test_sizing import BEST, Workload, peaked, readings, settings

from ctxbatch.sizing import DynamicSizer, FixedSizer, Memory
from ctxbatch.sizing.dynamic import Phase
from ctxbatch.sizing.history import Level


def held_by_an_earlier_run(curve: object = peaked, batches: int = 80, **more: float) -> Memory:
    """What a sizer that ran `batches` batches of `curve` to its end would have a next run start from."""
    work = Workload(DynamicSizer(settings(**more)), curve)  # type: ignore[arg-type]
    work.run(batches)
    memory = work.sizer.remember()
    assert memory is not None
    return memory


def test_a_sizer_remembers_the_size_it_held() -> None:
    work = Workload(DynamicSizer(settings()), peaked)
    work.run(80)
    sizer = work.sizer
    assert isinstance(sizer, DynamicSizer) and sizer.phase in (Phase.HOLD, Phase.PROBE)

    memory = sizer.remember()

    held = sizer._ref if sizer.phase is Phase.PROBE else sizer.size
    assert memory is not None and memory.settled and memory.size == held
    assert memory.level is not None and memory.level.throughput > 0


def test_a_resumed_sizer_starts_at_the_held_size_and_holds_it() -> None:
    memory = held_by_an_earlier_run()
    sizer = DynamicSizer(settings())

    assert sizer.resume(memory)
    sizes = Workload(sizer, peaked).run(15)

    assert sizes[:3] == [memory.size] * 3  # no search up from batch_size 10
    assert all(0.7 * memory.size <= size <= 2 * memory.size for size in sizes)  # a probe, no more
    assert sizes[-1] == memory.size
    assert f"an earlier run held {memory.size}" in sizer.decisions[0].reason


def test_a_resumed_sizer_probes_the_held_size_within_a_few_batches() -> None:
    # Given an earlier run that held 80 (under load, say), and today a curve whose best is near 600
    memory = Memory(80, True, Level(20, 30.0, 75.0, 1 / 75))

    # When a run resumes from it
    sizer = DynamicSizer(settings())
    sizer.resume(memory)
    sizes = Workload(sizer, peaked).run(12)

    # Then it holds 80 for a few batches only, then probes up and climbs on
    assert sizes[:3] == [80, 80, 80]
    assert max(sizes) >= 320


def test_an_unfinished_search_goes_on_from_its_best_size() -> None:
    # Given a run that ended while its search was still climbing (curve best near 600)
    memory = held_by_an_earlier_run(batches=7)
    assert not memory.settled and 10 < memory.size < BEST

    # When the next run starts from it
    sizer = DynamicSizer(settings())
    sizer.resume(memory)
    sizes = Workload(sizer, peaked).run(12)

    # Then it starts at that size and, its measurements taken up, climbs on after one batch
    assert sizes[0] == memory.size
    assert sizes[1] > memory.size
    assert "search reached" in sizer.decisions[0].reason


def test_a_remembered_size_is_clamped_to_todays_bounds() -> None:
    memory = Memory(1500, True, Level(4, 8.0, 700.0, 0.0014))

    smaller = DynamicSizer(settings(high=500))
    larger = DynamicSizer(settings(low=2000, high=4000))
    smaller.resume(memory)
    larger.resume(memory)

    assert smaller.plan(readings()).size == 500
    assert larger.plan(readings()).size == 2000
    assert "clamped to bounds 5..500" in smaller.decisions[0].reason


def test_a_resumed_sizer_comes_down_when_the_engine_got_slower() -> None:
    # Given an earlier run of a cheap engine, held at the largest size (2,000: 0.25 s a batch)
    memory = held_by_an_earlier_run(lambda n, i: 0.05 + 0.0001 * n, target_batch_seconds=3)
    assert memory.size == 2000

    # When today's engine costs 30x more per context (2,000 contexts: 6 s, the target is 3 s)
    sizer = DynamicSizer(settings(target_batch_seconds=3))
    sizer.resume(memory)
    sizes = Workload(sizer, lambda n, i: 0.05 + 0.003 * n).run(6)

    # Then the first batch is the remembered size, and the next ones fit the target again
    assert sizes[0] == 2000
    assert 0.05 + 0.003 * sizes[-1] <= 1.1 * 3


def test_a_resumed_sizer_searches_again_when_the_engine_got_faster() -> None:
    # Given an earlier run held where the 3 s target capped it (0.2 s + 4 ms per context: ~700)
    memory = held_by_an_earlier_run(lambda n, i: 0.2 + 0.004 * n, target_batch_seconds=3)
    assert memory.settled and 600 <= memory.size <= 760

    # When today's engine costs a tenth per context, so far bigger batches fit the target
    sizer = DynamicSizer(settings(target_batch_seconds=3))
    sizer.resume(memory)
    sizes = Workload(sizer, lambda n, i: 0.2 + 0.0004 * n).run(10)

    # Then it does not wait for a probe (20 batches away): the cost per context jumped, so it searches up
    assert max(sizes) > memory.size
    assert any("search again" in d.reason for d in sizer.decisions)


def test_a_sizer_that_has_planned_keeps_its_own_course() -> None:
    sizer = DynamicSizer(settings())
    sizer.plan(readings())

    assert not sizer.resume(Memory(600, True))
    assert sizer.plan(readings()).size == 10


def test_a_size_halved_by_trouble_is_not_remembered() -> None:
    work = Workload(DynamicSizer(settings()), peaked)
    work.run(80)

    work.run(1, critical=True)

    assert work.sizer.remember() is None  # the memory kept before the trouble stands


def test_a_fixed_sizer_remembers_nothing() -> None:
    sizer = FixedSizer(settings(batch_size=100))

    assert not sizer.remembers
    assert sizer.remember() is None
    assert not sizer.resume(Memory(600, True))
    assert sizer.plan(readings()).size == 100


def test_a_memory_survives_its_document_and_a_bad_document_is_none() -> None:
    memory = Memory(640, False, Level(2, 1.5, 850.0, 0.0012))

    assert Memory.from_document(memory.as_document()) == memory
    assert Memory.from_document(Memory(640, True).as_document()) == Memory(640, True)
    assert Memory.from_document({"size": "640", "state": "held"}) is None
    assert Memory.from_document({"size": 0, "state": "held"}) is None
    assert Memory.from_document({"size": 640}) is None
    assert Memory.from_document({"size": 640, "state": "held", "throughput": -1.0}) == Memory(640, True)
