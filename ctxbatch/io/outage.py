"""A database outage: told in one short line (pymongo's whole topology description at debug level);
a queue that cannot be read is not known to be drained; an operation that must not be lost to it
(a partition's write of results it paid for) is tried again until the database is back, within a bound."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import pymongo
from pymongo.errors import ConnectionFailure, PyMongoError

from ctxbatch.errors import DatabaseUnavailable
from ctxbatch.io.store import ContextStore

log = logging.getLogger("ctxbatch.io.outage")
T = TypeVar("T")

# The database is away (down, restarting, unreachable): not the operation's fault, so worth trying again.
AWAY: tuple[type[BaseException], ...] = (ConnectionFailure, DatabaseUnavailable)
# Between tries: pymongo itself waits for a server that is down (server selection), so these only
# space out tries that failed at once (a connection cut by the server's death).
FIRST_PAUSE = 0.1
LONGEST_PAUSE = 2.0

# pymongo appends these (a server selection's whole topology) to its messages.
DETAIL_MARKERS = (", Timeout:", ", Topology Description:", " (configured timeouts:")
MAX_REASON = 160


def short_reason(exc: BaseException) -> str:
    """The error's type and the head of its message, one line of at most MAX_REASON characters."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    for marker in DETAIL_MARKERS:
        text = text.split(marker)[0]
    if len(text) > MAX_REASON:
        text = text[: MAX_REASON - 3] + "..."
    if isinstance(exc, PyMongoError) or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    log.debug("database error in full: %s", exc)
    return text


def known_drained(store: ContextStore, queues: Sequence[str] | None = None) -> bool:
    """Whether nothing is left to do (in `queues`, if given); False when the database does not answer."""
    try:
        return store.drained(queues)
    except PyMongoError as exc:
        log.info("the database did not answer (%s); not known to be drained", short_reason(exc))
        return False


def ride_out(store: ContextStore, operation: Callable[[], T], seconds: float, what: str) -> T:
    """`operation()` on `store`, tried again while the database is away, for at most `seconds` in all; then its error.

    Each try runs under what is left of the bound (`pymongo.timeout`), so a try that waits for a
    server never outlasts it. Inside that bound pymongo would wait for a server the whole of it, in
    silence, once it knows the server is gone: so each try first pings under the client's own
    serverSelectionTimeoutMS (`ContextStore.ping`), and an outage is told at every try.
    The operation must be safe to repeat: a try cut off may have been applied (a fenced write is:
    what it already wrote no longer matches its fence).
    """
    began = time.monotonic()
    pause = FIRST_PAUSE
    told = False
    while True:
        with pymongo.timeout(max(seconds - (time.monotonic() - began), FIRST_PAUSE)):
            try:
                store.ping()
                done = operation()
                if told:
                    log.info("%s: done once the database was back, after %.1f s", what, time.monotonic() - began)
                return done
            except AWAY as exc:
                left = seconds - (time.monotonic() - began)
                if left <= 0:
                    raise
                log.info("%s: the database did not answer (%s); trying again", what, short_reason(exc))
                told = True
        time.sleep(min(pause, max(left, 0.0)))
        pause = min(pause * 2, LONGEST_PAUSE)
