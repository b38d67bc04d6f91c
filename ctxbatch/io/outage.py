"""A database outage: told in one short line (pymongo's whole topology description at debug level);
a queue that cannot be read is not known to be drained."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pymongo.errors import PyMongoError

from ctxbatch.io.store import ContextStore

log = logging.getLogger("ctxbatch.io.outage")

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
