"""Engines: what a partition's rows are processed with, and how a name becomes one.

Three kinds (issue 3):
- row: a plain `fn(payload: dict) -> result`, called once per context;
- async: an `async def fn(payload)`, many payloads at once per partition, at most `engine_concurrency`;
- batch: marked with `@batch_engine`, `fn(frame) -> one result per row`, where `frame` is one partition's
  pandas DataFrame (`id`, `payload`, `priority`, `attempts`).

Names resolve with the one resolver (`ctxbatch.resolve`): an Engine passes through, a callable is wrapped,
a short alias names a built-in, "module:callable" is imported with the current directory on sys.path, and
anything else is refused with an EngineError that says what was expected.

An engine may give itself a `configure(settings)` attribute returning the engine to run: the loop calls it
with the run's Settings before shipping the engine (the built-in `http` engine reads its `http:` section).
An engine may give itself `setup()` and `teardown()` attributes: each Dask worker calls `setup()` once
before its first partition and `teardown()` when it closes (`ctxbatch.pipeline.worker`). Either may be
`async def`, and then runs on the worker's engine loop, where the engine's async calls run.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import cloudpickle

from ctxbatch.errors import EngineError
from ctxbatch.resolve import ENGINE_TARGETS, import_attribute, where

Kind = Literal["row", "async", "batch"]
KINDS: tuple[Kind, ...] = ("row", "async", "batch")
BATCH_MARK = "__ctxbatch_batch_engine__"
EXPECTED = (
    f"expected a callable, a built-in engine ({', '.join(ENGINE_TARGETS)}) or 'module:callable' "
    "(e.g. 'my_engines:score', importable from the current directory)"
)

F = TypeVar("F", bound=Callable[..., Any])


def batch_engine(fn: F) -> F:
    """Mark `fn` as a batch engine: it takes a partition's DataFrame and returns one result per row.

    When it raises, the partition is bisected until the bad rows are found, so the good rows still complete.
    """
    if not callable(fn):
        raise EngineError(f"@batch_engine decorates a callable, not a {type(fn).__name__}")
    try:
        setattr(fn, BATCH_MARK, True)
    except (AttributeError, TypeError):
        raise EngineError(f"cannot mark {fn!r} as a batch engine; decorate the function it calls instead") from None
    return fn


def is_batch_engine(fn: Any) -> bool:
    return bool(getattr(fn, BATCH_MARK, False))


def kind_of(fn: Callable[..., Any]) -> Kind:
    """The kind of a callable: batch if marked, async if a coroutine function (or has an async __call__), else row."""
    if is_batch_engine(fn):
        return "batch"
    # An instance whose class defines `async def __call__` is an async engine too (an API client object).
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):
        return "async"
    return "row"


def _name_of(fn: Callable[..., Any]) -> str:
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}:{qualname}" if module else qualname


@dataclass(frozen=True)
class Engine:
    """A resolved engine: the callable, its kind, and a name for logs and metrics.

    Dask ships it to the workers. One imported from "module:callable" pickles as that name and the directory
    it was found from, so a worker re-imports it even when the module lives in the user's current directory.
    """

    fn: Callable[..., Any]
    kind: Kind
    name: str
    spec: str | None = None
    search_path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EngineError(f"engine kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not callable(self.fn):
            raise EngineError(f"engine {self.name!r} is a {type(self.fn).__name__}, not a callable")

    def __reduce__(self) -> tuple[Any, ...]:
        if self.spec is None:
            return (Engine, (self.fn, self.kind, self.name))
        return (_import_engine, (self.name, self.spec, self.search_path))

    def __repr__(self) -> str:
        return f"<Engine {self.name} kind={self.kind}>"


def fingerprint(engine: Engine) -> str:
    """What tells an engine apart from another of its name: the name and a digest of its pickled form.

    Computed once per run, where the run is built, and shipped to the workers with the job: each
    partition's task unpickles its own copy of the engine, and the worker matches the copy it set up.
    """
    return f"{engine.name}:{hashlib.sha256(cloudpickle.dumps(engine)).hexdigest()}"


def resolve_engine(spec: str | Callable[..., Any] | Engine | None) -> Engine:
    """An Engine from an Engine, a callable, a built-in alias or "module:callable"; EngineError otherwise."""
    if isinstance(spec, Engine):
        return spec
    if isinstance(spec, str):
        # Resolved once, in the process that reads the config; the workers get the absolute directory.
        return _import_engine(spec.strip(), *where(spec, ENGINE_TARGETS))
    if spec is None:
        raise EngineError(f"no engine given: pass --engine or set `engine:` in the config; {EXPECTED}")
    if callable(spec):
        return Engine(spec, kind_of(spec), _name_of(spec))
    raise EngineError(f"cannot use a {type(spec).__name__} as an engine; {EXPECTED}")


def configured(engine: Engine, settings: Any) -> Engine:
    """The engine its own `configure(settings)` returns, if it has one; shipped as itself, not re-imported."""
    configure = getattr(engine.fn, "configure", None)
    if not callable(configure):
        return engine
    fn = configure(settings)
    return Engine(fn, kind_of(fn), engine.name)


def _import_engine(name: str, spec: str, search_path: str | None) -> Engine:
    fn = import_attribute(spec, what="engine", expected=EXPECTED, refuse=EngineError, search_path=search_path)
    return Engine(fn, kind_of(fn), name, spec, search_path)
