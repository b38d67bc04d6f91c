"""Batch deadlines: a completion window set at submit; what is still pending when it passes expires.

A batch with a window carries `deadline_ms` (epoch milliseconds, the form nx-27017 compares in SQL)
while its deadline is ahead. Once it passed, `expire_due` turns the batch's pending contexts into
`expired` and removes `deadline_ms`; contexts in flight then finish as they would and are kept, and
completed ones keep their results. `retry(expired=True)` sets a fresh deadline one window ahead.
Every claim, the loop's reaper and every status read call `expire_due`, so a deadline holds whether
or not a loop runs.
"""

from __future__ import annotations

import re
import time

from ctxbatch.errors import SubmitError
from ctxbatch.io.connection import Connection
from ctxbatch.io.schema import Status, epoch_ms, eq, utcnow

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
# The claim checks deadlines at most this often (a find on a small index, but on every claim).
CHECK_SECONDS = 1.0


def window_seconds(window: str | float | None) -> float | None:
    """A completion window as seconds: "24h", "30m", "90s", "2d", or a number of seconds; None for none."""
    if window is None:
        return None
    if isinstance(window, int | float) and not isinstance(window, bool):
        seconds = float(window)
    else:
        found = DURATION.match(window) if isinstance(window, str) else None
        if found is None:
            raise SubmitError(None, "completion_window", f"must be a duration such as 24h, 30m or 90s, got {window!r}")
        seconds = float(found.group(1)) * UNITS[found.group(2)]
    if not seconds > 0:
        raise SubmitError(None, "completion_window", f"must be longer than 0 s, got {window!r}")
    return seconds


def deadline_ms(seconds: float) -> int:
    """The deadline `seconds` from now, as stored."""
    return epoch_ms(utcnow()) + round(seconds * 1000)


class Deadlines:
    """Expires what a passed deadline leaves pending; throttled for callers that ask often."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._checked_at = 0.0

    def expire_due(self) -> int:
        """Expire the pending contexts of every batch whose deadline passed; how many."""
        now_ms = epoch_ms(utcnow())
        expired = 0
        for batch in self.connection.batches.find({"deadline_ms": {"$lte": now_ms}}, {"_id": 1}):
            expired += self.connection.contexts.update_many(
                {"batch_id": eq(batch["_id"]), "status": eq(Status.PENDING.value)},
                {
                    "$set": {"status": Status.EXPIRED.value, "finished_ms": now_ms},
                    "$currentDate": {"finished_at": True},
                },
            ).modified_count
            # After the contexts: a cut-off run leaves the deadline in place and the next one finishes.
            self.connection.batches.update_one(
                {"_id": batch["_id"]}, {"$unset": {"deadline_ms": ""}, "$currentDate": {"expired_at": True}}
            )
        return expired

    def expire_due_now_and_then(self) -> int:
        """expire_due() at most once per CHECK_SECONDS."""
        if time.monotonic() - self._checked_at < CHECK_SECONDS:
            return 0
        self._checked_at = time.monotonic()
        return self.expire_due()
