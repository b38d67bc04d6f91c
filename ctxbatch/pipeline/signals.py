"""SIGINT/SIGTERM while a loop runs: the first drains the batches in flight, the second releases them."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def stop_on_signals(
    stop: Callable[[bool], None], stopping: Callable[[], bool], say: Callable[[str], None]
) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM call `stop(now)`: now is whether a stop was already asked for.

    Signal handlers can only be installed from the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: Any) -> None:
        now = stopping()
        stop(now)
        name = signal.Signals(signum).name
        say(
            f"{name}: releasing batches in flight"
            if now
            else f"{name}: finishing batches in flight (again to release them now)"
        )

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
