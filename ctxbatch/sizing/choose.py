"""Which sizer a run uses: `worker.sizer` (or the `sizer=` argument) resolved to a Sizer.

Resolved by the one resolver (`ctxbatch.resolve`): a Sizer passes through; None follows
`settings.sizer`, then `dynamic_batch_sizing`; "fixed" and "dynamic" name the strategies here;
"module:callable" is imported with the current directory importable; a callable (a Sizer class or a
factory) is called with the settings. Anything else is a ConfigError that says what was expected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ctxbatch.config import WorkerSettings
from ctxbatch.errors import ConfigError
from ctxbatch.resolve import resolve
from ctxbatch.sizing.base import Sizer
from ctxbatch.sizing.dynamic import DynamicSizer
from ctxbatch.sizing.fixed import FixedSizer

SIZERS: dict[str, type[Sizer]] = {"fixed": FixedSizer, "dynamic": DynamicSizer}
EXPECTED = (
    "expected 'fixed', 'dynamic', 'module:callable', a Sizer, or a callable taking WorkerSettings and returning a Sizer"
)

SizerSpec = str | Sizer | Callable[[WorkerSettings], Sizer] | None


def _refuse(message: str) -> ConfigError:
    return ConfigError("worker.sizer", message)


def resolve_sizer(spec: SizerSpec, settings: WorkerSettings) -> Sizer:
    """A Sizer from a spec (see the module's note)."""
    if isinstance(spec, Sizer):
        return spec
    if spec is None:
        spec = settings.sizer or ("dynamic" if settings.dynamic_batch_sizing else "fixed")
    factory: Any = resolve(spec, SIZERS, what="sizer", expected=EXPECTED, refuse=_refuse)
    if not callable(factory):
        raise _refuse(f"{EXPECTED}, got {type(spec).__name__}")
    label = spec if isinstance(spec, str) else getattr(spec, "__qualname__", repr(spec))
    try:
        sizer = factory(settings)
    except Exception as exc:  # the user's factory: say which one failed, and how
        raise _refuse(f"{label}(settings) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(sizer, Sizer):
        raise _refuse(f"{label} returned {type(sizer).__name__}, not a ctxbatch.sizing.Sizer")
    return sizer
