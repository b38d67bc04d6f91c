"""The one resolver: how a name in a config or on the command line becomes an object.

Engines, sizers and subscribers all resolve the same way (rq's `resolve_serializer` is the model):
an object passes through, a short alias names a built-in, "module:callable" is imported with the
current directory importable (as uvicorn does), and anything else is refused with an error that
says what was expected. The built-in engines are listed here by name (with the line `ctxbatch run
--help` shows), so resolving one imports only its module and nothing below `engines/` is imported by
the pipeline.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ctxbatch.errors import CtxbatchError


class Builtin(NamedTuple):
    """A built-in engine: the callable it imports, and the line `ctxbatch run --help` shows for it."""

    target: str
    summary: str


# The one list of built-in engines: resolving a name and `ctxbatch run --help` both read it.
BUILTIN_ENGINES: dict[str, Builtin] = {
    "text": Builtin(
        "ctxbatch.engines.text:text_stats", 'CPU-bound: word counts and a SHA-256 of payload["text"] (demo)'
    ),
    "service": Builtin(
        "ctxbatch.engines.service:call_service", 'async: a simulated call taking payload["latency_ms"] (20 ms)'
    ),
    "batched-call": Builtin(
        "ctxbatch.engines.service:batched_call", "batch: a simulated call per partition (fixed + per-row cost)"
    ),
    "echo": Builtin("ctxbatch.engines.trivial:echo", 'returns {"ok": true, "n": keys}: the pipeline\'s own overhead'),
    "http": Builtin("ctxbatch.engines.http:http_engine", "async: one request per context to the service in `http:`"),
    "openai": Builtin(
        "ctxbatch.engines.openai:openai_engine", "async: each payload an OpenAI batch request to openai.base_url"
    ),
}
ENGINE_TARGETS: dict[str, str] = {name: builtin.target for name, builtin in BUILTIN_ENGINES.items()}

Refuse = Callable[[str], CtxbatchError]


def import_attribute(spec: str, *, what: str, expected: str, refuse: Refuse, search_path: str | None = None) -> Any:
    """Import "module:attribute" (dotted attributes allowed), with `search_path` first on sys.path if given.

    `what` names the thing in messages ("engine", "sizer"); `refuse` turns a message into the error to raise.
    """
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path or spec.count(":") != 1:
        raise refuse(f"unknown {what} {spec!r}; {expected}")
    if search_path and search_path not in sys.path:
        sys.path.insert(0, search_path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(f"{missing}."):
            where = f"the current directory ({search_path}) or " if search_path else ""
            raise refuse(
                f"{what} {spec!r}: cannot import {module_name!r}: no module named {missing!r} in {where}"
                "the installed packages"
            ) from None
        raise refuse(f"{what} {spec!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        # The user's module raised while importing: one line here, the traceback stays on the cause.
        raise refuse(f"{what} {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise refuse(f"{what} {spec!r}: module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise refuse(f"{what} {spec!r} is a {type(target).__name__}, not a callable")
    return target


def where(text: str, aliases: Mapping[str, str]) -> tuple[str, str | None]:
    """What a name imports, and from where: an alias's "module:callable" from the installed packages,
    anything else as "module:callable" with the current directory importable."""
    text = text.strip()
    if text in aliases:
        return aliases[text], None
    return text, os.getcwd()


def resolve(spec: Any, aliases: Mapping[str, Any], *, what: str, expected: str, refuse: Refuse) -> Any:
    """A non-string passes through; an alias is looked up (a string value is imported); else "module:callable"."""
    if not isinstance(spec, str):
        return spec
    found = aliases.get(spec.strip())
    if found is not None and not isinstance(found, str):
        return found
    target, search_path = where(spec, {k: v for k, v in aliases.items() if isinstance(v, str)})
    return import_attribute(target, what=what, expected=expected, refuse=refuse, search_path=search_path)
