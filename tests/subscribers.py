"""Test subscribers at module level, so "tests.subscribers:Name" resolves them by name."""

from __future__ import annotations

from typing import Any

from ctxbatch import Subscriber
from ctxbatch.pipeline.events import HOOKS


class Recorder(Subscriber):
    """Records every event it gets, with its hook's name, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def __getattribute__(self, name: str) -> Any:
        if name in HOOKS:
            return lambda event: self.seen.append((name, event))
        return super().__getattribute__(name)

    def hooks(self) -> list[str]:
        return [hook for hook, _ in self.seen]

    def events(self, hook: str) -> list[Any]:
        return [event for name, event in self.seen if name == hook]


class Raising(Subscriber):
    """Raises in every hook."""

    def __getattribute__(self, name: str) -> Any:
        if name in HOOKS:

            def hook(event: Any) -> None:
                raise RuntimeError(f"a broken subscriber ({name})")

            return hook
        return super().__getattribute__(name)
