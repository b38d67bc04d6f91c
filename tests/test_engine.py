"""Engine resolution: objects, built-in aliases, "module:callable" from the current directory, refusals."""

from __future__ import annotations

import pickle
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import engines
import pandas as pd
import pytest
from click.testing import CliRunner

import ctxbatch
from ctxbatch.cli import main
from ctxbatch.errors import CriticalError, EngineError
from ctxbatch.pipeline.engine import Engine, batch_engine, resolve_engine
from ctxbatch.pipeline.isolate import run_partition
from ctxbatch.pipeline.worker import WorkerResources
from ctxbatch.resolve import BUILTIN_ENGINES

ModuleWriter = Callable[[str], str]


@pytest.fixture
def engine_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleWriter]:
    """The current directory is a fresh temp dir; write(source) puts a uniquely named module in it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    written: list[str] = []

    def write(source: str) -> str:
        name = f"user_engines_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(source)
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def frame_of(*payloads: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"c{i}" for i in range(len(payloads))],
            "payload": list(payloads),
            "priority": [50] * len(payloads),
            "attempts": [0] * len(payloads),
        }
    )


def test_an_engine_passes_through_unchanged() -> None:
    engine = Engine(engines.echo, "row", "echo")
    assert resolve_engine(engine) is engine


def test_a_plain_callable_is_a_row_engine() -> None:
    engine = resolve_engine(engines.echo)
    assert (engine.kind, engine.name) == ("row", "engines:echo")


def test_an_async_def_is_an_async_engine() -> None:
    assert resolve_engine(engines.async_fail_when_flagged).kind == "async"


def test_an_object_with_an_async_call_is_an_async_engine() -> None:
    class Client:
        async def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
            return payload

    assert resolve_engine(Client()).kind == "async"


def test_batch_engine_mark_makes_a_batch_engine() -> None:
    assert resolve_engine(engines.batch_fail_when_flagged).kind == "batch"


def test_batch_engine_is_exported_at_the_top_level() -> None:
    assert ctxbatch.batch_engine is batch_engine
    assert "batch_engine" in ctxbatch.__all__


def test_batch_engine_refuses_what_is_not_callable() -> None:
    with pytest.raises(EngineError, match="decorates a callable"):
        batch_engine(42)  # type: ignore[type-var]


BUILTIN_KINDS = {
    "text": "row",
    "echo": "row",
    "service": "async",
    "batched-call": "batch",
    "http": "async",
    "openai": "async",
}


@pytest.mark.parametrize("alias", list(BUILTIN_ENGINES))
def test_a_builtin_alias_resolves_to_its_engine(alias: str) -> None:
    engine = resolve_engine(alias)
    assert (engine.name, engine.kind) == (alias, BUILTIN_KINDS[alias])


def test_run_help_lists_every_builtin_engine_on_a_line_of_its_own() -> None:
    help_text = CliRunner().invoke(main, ["run", "--help"], terminal_width=80).stdout
    section = help_text.split("Built-in engines (--engine NAME):\n")[1]
    listed = [line.split(maxsplit=1) for line in section.splitlines()]
    assert listed == [[name, builtin.summary] for name, builtin in BUILTIN_ENGINES.items()]


def test_module_callable_is_imported_from_the_current_directory(engine_dir: ModuleWriter) -> None:
    module = engine_dir("def score(payload):\n    return {'doubled': payload['x'] * 2}\n")

    engine = resolve_engine(f"{module}:score")

    assert engine.kind == "row"
    assert engine.fn({"x": 21}) == {"doubled": 42}


def test_module_callable_may_name_a_dotted_attribute(engine_dir: ModuleWriter) -> None:
    module = engine_dir("class Scorer:\n    @staticmethod\n    def score(payload):\n        return 1\n")
    assert resolve_engine(f"{module}:Scorer.score").fn({}) == 1


def test_engine_from_the_current_directory_unpickles_after_leaving_it(
    engine_dir: ModuleWriter, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an engine imported from the current directory, pickled as a Dask worker would receive it
    module = engine_dir("def score(payload):\n    return {'ok': True}\n")
    engine = resolve_engine(f"{module}:score")
    shipped = pickle.dumps(engine)
    # When a process that never imported it, elsewhere, unpickles it
    sys.modules.pop(module, None)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != engine.search_path])
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    received = pickle.loads(shipped)
    # Then it is the same engine, re-imported by name
    assert (received.name, received.kind, received.fn({})) == (engine.name, "row", {"ok": True})


def test_a_callable_engine_pickles_by_reference() -> None:
    engine = resolve_engine(engines.batch_fail_when_flagged)
    assert pickle.loads(pickle.dumps(engine)) == engine


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nonsense", r"unknown engine 'nonsense'; expected a callable, a built-in engine .* or 'module:callable'"),
        ("a:b:c", r"unknown engine 'a:b:c'"),
        (":score", r"unknown engine ':score'"),
        ("no_such_module_xyz:score", r"no module named 'no_such_module_xyz' in the current directory"),
        (None, r"no engine given: pass --engine or set `engine:` in the config"),
        (42, r"cannot use a int as an engine; expected a callable"),
    ],
)
def test_a_bad_spec_is_refused_with_what_was_expected(spec: Any, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        resolve_engine(spec)


def test_a_missing_attribute_is_named(engine_dir: ModuleWriter) -> None:
    module = engine_dir("def score(payload):\n    return 1\n")
    with pytest.raises(EngineError, match=rf"module '{module}' has no attribute 'scor'"):
        resolve_engine(f"{module}:scor")


def test_an_attribute_that_is_not_callable_is_refused(engine_dir: ModuleWriter) -> None:
    module = engine_dir("THRESHOLD = 3\n")
    with pytest.raises(EngineError, match=r"is a int, not a callable"):
        resolve_engine(f"{module}:THRESHOLD")


def test_a_module_that_fails_to_import_is_reported_in_one_line(engine_dir: ModuleWriter) -> None:
    module = engine_dir("1 / 0\ndef score(payload):\n    return 1\n")
    with pytest.raises(EngineError, match=rf"importing '{module}' failed: ZeroDivisionError: division by zero"):
        resolve_engine(f"{module}:score")


def test_a_missing_dependency_of_the_module_is_named(engine_dir: ModuleWriter) -> None:
    module = engine_dir("import not_installed_dep_xyz\ndef score(payload):\n    return 1\n")
    with pytest.raises(EngineError, match=r"importing .* failed: No module named 'not_installed_dep_xyz'"):
        resolve_engine(f"{module}:score")


def test_a_failing_setup_stops_the_batch_and_is_tried_again_next_time() -> None:
    attempts: list[int] = []

    def engine(payload: dict[str, Any]) -> dict[str, Any]:
        return {}

    def setup() -> None:
        attempts.append(1)
        raise OSError("model file missing")

    engine.setup = setup  # type: ignore[attr-defined]
    resources = WorkerResources()
    resources.setup()
    for _ in range(2):
        with pytest.raises(CriticalError, match=r"setup\(\) failed: OSError: model file missing"):
            resources.ready(resolve_engine(engine))
    assert len(attempts) == 2


def test_text_engine_counts_words() -> None:
    outcome = run_partition("text", frame_of({"text": "the cat saw the dog"}))
    result = outcome.results["c0"]
    assert (result["words"], result["unique_words"], result["top_words"][0]) == (5, 4, ["the", 2])


@pytest.mark.parametrize("payload", [{"fail": True, "text": "x"}, {"body": "no text here"}])
def test_text_engine_fails_a_flagged_or_textless_row(payload: dict[str, Any]) -> None:
    outcome = run_partition("text", frame_of(payload, {"text": "fine"}))
    assert (list(outcome.errors), outcome.errors["c0"]["type"], list(outcome.results)) == (["c0"], "ValueError", ["c1"])


def test_service_engine_fails_a_flagged_row() -> None:
    outcome = run_partition("service", frame_of({"latency_ms": 0}, {"latency_ms": 0, "fail": True}))
    assert (list(outcome.results), outcome.errors["c1"]["type"]) == (["c0"], "ServiceRefused")


def test_batched_call_engine_finds_the_refused_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXBATCH_CALL_FIXED_MS", "0")
    monkeypatch.setenv("CTXBATCH_CALL_PER_CONTEXT_MS", "0")
    outcome = run_partition("batched-call", frame_of({}, {"fail": True}, {}, {}))
    assert (sorted(outcome.results), list(outcome.errors)) == (["c0", "c2", "c3"], ["c1"])


def test_a_bad_cost_setting_stops_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXBATCH_CALL_FIXED_MS", "fast")
    with pytest.raises(CriticalError, match="CTXBATCH_CALL_FIXED_MS='fast' is not a number"):
        run_partition("batched-call", frame_of({}))


def test_echo_engine_counts_payload_keys() -> None:
    assert run_partition("echo", frame_of({"a": 1, "b": 2})).results == {"c0": {"ok": True, "n": 2}}
