"""A worker's share of the limits every loop on the database shares (`limits:`), and their pauses.

One `SharedLimit` per limit name on a worker (held by `WorkerCalls`), over the database's budget
(io/limits.py). A call waits until the worker's balance covers it (1 request, and its token estimate
under `tokens_per_minute`), then spends it and starts at once. When the balance falls short, one
waiting call (a coroutine, or a row engine's thread) takes a slice from the database for all the
waiters: what they need, or a quarter second of what the worker has been using, at most a quarter
second of the whole rate (at least the call's cost); the others wait for it, so the database sees a
few writes per second per worker, not one per call. A slice unused `SLICE_LIFE` after it was granted
is dropped (pipeline/slices.py). With the database's burst of `BURST_SECONDS`, a call starts no more
than burst + slice life = 1 s of the rate ahead: any 60 s sees at most the limit x 61 s of calls.

Token charges are corrected from the answer's `usage.total_tokens`: a shortfall is paid with the
next slice; unused tokens ride back to the database with the worker's next read or take.

A pause stops every call under the name: a call that meets `RetryLater(after_seconds)` (a 429 or
503 with Retry-After) pauses the name here at once and in the database for every other worker and
loop; each worker with calls to start re-reads the pause at least every `POLL_SECONDS` (with its
next take, or one find by id), in the background from `REFRESH_SECONDS` on, so calls rarely wait
for it; while the database is away, calls go on under the pause last known. A `RetryLater` without
a wait defers its context alone (with the backoff): nothing says how long the service wants everyone
to keep away. Waiting is neither a failure nor a retry: the call simply starts later, and its
timeout counts from then.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from ctxbatch.config import LimitsSettings
from ctxbatch.errors import RetryLater
from ctxbatch.io.limits import Draw, LimitBook
from ctxbatch.io.outage import AWAY, short_reason
from ctxbatch.pipeline.slices import Balance, Cost
from ctxbatch.pipeline.tokens import used_tokens

BURST_SECONDS = 0.5  # how far ahead of the rate the database grants (GCRA burst)
SLICE_LIFE = 0.5  # a slice's units unused this long after the grant are dropped; burst + life = 1 s
SLICE_SECONDS = 0.25  # a slice is at most this much of the whole rate (or one call's cost)
POLL_SECONDS = 0.2  # the oldest view of a pause a call may start on
# A view older than this is read again in the background while calls go on starting on it: a call
# that had to wait for the read stalled every call of the worker for a database round trip, five
# times a second (a run with no rates at all went at half speed once the database was busy).
REFRESH_SECONDS = POLL_SECONDS / 2
SMOOTHING = 0.5  # how far one refill moves the worker's estimate of its own use

log = logging.getLogger("ctxbatch.pipeline.budget")


class SharedLimit:
    """A worker's view of one limit name: its balance, its share of the refills, and the pause."""

    def __init__(self, book: LimitBook, settings: LimitsSettings) -> None:
        self.book, self.name, self.settings = book, settings.name, settings
        per_minute = {"requests": settings.requests_per_minute, "tokens": settings.tokens_per_minute}
        self.rates = {kind: rate / 60 for kind, rate in per_minute.items() if rate is not None}  # per second
        self._cond = threading.Condition()
        self._balance = Balance()
        self._owed = 0.0  # tokens: > 0 to pay with the next slice, < 0 to give back
        self._paused_until = 0.0  # epoch seconds
        self._read_at = float("-inf")  # monotonic: when the pause was last read
        self._away = False  # the last read or take found the database away: the view stands until it is back
        self._wait_until = 0.0  # monotonic: the database said no take before then
        self._busy = False  # one caller talks to the database at a time
        self._waiting: dict[str, float] = {}  # what the waiting calls need, by kind
        self._use = dict.fromkeys(self.rates, 0.0)  # the worker's own use per second, by kind
        self._spent = dict.fromkeys(self.rates, 0.0)  # spent since the last take
        self._taken_at = time.monotonic()
        self._changed: asyncio.Event | None = None  # set on the worker's loop when a refill ends
        self._refresh: asyncio.Task[None] | None = None  # the background read of the pause, while it runs

    @property
    def counts_tokens(self) -> bool:
        return "tokens" in self.rates

    def cost(self, tokens: int | None) -> Cost:
        """What one call needs of the kinds this limit counts."""
        need = {"requests": 1.0, "tokens": float(tokens or 0)}
        return {kind: need[kind] for kind in self.rates}

    # -- waiting for budget ---------------------------------------------------------------

    def acquire(self, cost: Cost) -> None:
        """Block a worker thread (a row engine's call) until the call may start; its budget spent."""
        self._waits(cost, +1)
        try:
            while True:
                with self._cond:
                    wait, ahead, refill = self._turn(cost)
                    if wait != 0 and not refill:  # another caller talks to the database, or a wait runs
                        self._cond.wait(min(wait or POLL_SECONDS, POLL_SECONDS))
                if ahead:
                    threading.Thread(target=self._refresh_ahead_sync, name="ctxbatch-limit", daemon=True).start()
                if wait == 0:
                    return
                if refill:
                    try:
                        self._refill(cost)
                    finally:
                        self._done_refilling()
        finally:
            self._waits(cost, -1)

    async def acquire_async(self, cost: Cost) -> None:
        """Wait on the worker's loop (an async engine's call) until the call may start; its budget spent.

        The database is reached in a thread, never on the loop; one waiter refills for all.
        """
        self._waits(cost, +1)
        try:
            while True:
                with self._cond:
                    wait, ahead, refill = self._turn(cost)
                if ahead:
                    self._refresh = asyncio.get_running_loop().create_task(self._refresh_ahead())
                if wait == 0:
                    return
                if refill:
                    try:
                        await asyncio.to_thread(self._refill, cost)
                    finally:
                        self._done_refilling()
                        self.wake()
                    continue
                if self._changed is None:
                    self._changed = asyncio.Event()
                try:
                    async with asyncio.timeout(min(wait or POLL_SECONDS, POLL_SECONDS)):
                        await self._changed.wait()
                except TimeoutError:
                    pass
        finally:
            self._waits(cost, -1)

    def _turn(self, cost: Cost) -> tuple[float | None, bool, bool]:
        """Under the lock: (`_try`'s answer, read the pause ahead in the background, refill now).

        The caller that is told to read ahead or to refill holds the one turn to talk to the database.
        """
        wait = self._try(cost)
        ahead = wait == 0 and not self._busy and time.monotonic() - self._read_at > REFRESH_SECONDS
        refill = wait is None and not self._busy
        self._busy = self._busy or ahead or refill
        return wait, ahead, refill

    async def _refresh_ahead(self) -> None:
        """Read the pause (and give back what is owed back) while calls go on on the current view."""
        try:
            await asyncio.to_thread(self._refill, {})
        finally:
            self._done_refilling()
            self.wake()

    def _refresh_ahead_sync(self) -> None:
        """`_refresh_ahead` for row engines, in a thread of its own."""
        try:
            self._refill({})
        finally:
            self._done_refilling()

    def _try(self, cost: Cost) -> float | None:
        """Under the lock: 0 when the call may start (its cost spent); the seconds to wait; None: refill due."""
        mono, wall = time.monotonic(), time.time()
        if mono - self._read_at > POLL_SECONDS and not self._away:
            return None
        if self._paused_until > wall:
            return self._paused_until - wall
        if self._owed <= 0 and self._balance.spend(cost, mono):
            for kind, units in cost.items():
                self._spent[kind] += units
            return 0.0
        if mono < self._wait_until:
            return self._wait_until - mono
        return None

    def _waits(self, cost: Cost, sign: int) -> None:
        with self._cond:
            for kind, units in cost.items():
                self._waiting[kind] = self._waiting.get(kind, 0.0) + sign * units

    def _done_refilling(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def _refill(self, cost: Cost) -> None:
        """Read the pause, and take a slice when the balance does not cover `cost` (in a worker thread)."""
        with self._cond:
            mono = time.monotonic()
            paused = self._paused_until > time.time()  # nothing is taken that the pause would let expire
            short = not paused and (self._owed > 0 or not self._balance.covers(cost, mono))
            # Asked again even while the database's last wait runs: others' give-backs may have shortened it.
            draws = self._draws(cost, mono) if short else {}
            debt = max(self._owed, 0.0) if draws else 0.0  # paid by this take, on top of the slice
            give_back = max(-self._owed, 0.0) if self.counts_tokens else 0.0
            if give_back and not draws:  # unused tokens ride back with this read
                draws = {"tokens": Draw(0.0, self.rates["tokens"], give_back)}
        try:
            if not draws:
                until = self.book.paused_until(self.name)
                with self._cond:
                    self._paused_until = max(self._paused_until, until)
                    self._read_at, self._away = mono, False
                return
            granted = self.book.take(self.name, draws, BURST_SECONDS)
        except AWAY as exc:
            self._database_away(exc, short=bool(draws))
            return
        with self._cond:
            self._paused_until = max(self._paused_until, granted.paused_until)
            self._read_at, self._away = mono, False
            if not granted.applied:
                return
            self._owed += draws["tokens"].give_back if "tokens" in draws else 0.0  # given back: settled
            if granted.granted:
                self._owed -= debt
                units = {kind: d.take for kind, d in draws.items()}
                if "tokens" in units:
                    units["tokens"] -= debt
                self._balance.add(units, mono + SLICE_LIFE)
                self._wait_until = 0.0
            else:
                self._wait_until = mono + granted.wait

    def _database_away(self, exc: BaseException, short: bool) -> None:
        """The database did not answer a read or a take: calls go on under the pause known (none could
        be published meanwhile) until it answers again, read in the background from a poll after this
        try; a call short of budget waits for it.

        Raised, it would stop the partition and throw away the results its rows already paid for. And
        a view that had to be fresh would make every call wait for a read that waits for the server.
        """
        log.info("limit %s: the database did not answer (%s); asking again later", self.name, short_reason(exc))
        with self._cond:
            self._read_at, self._away = time.monotonic(), True  # from when this try gave up: it waited for a server
            if short:
                self._wait_until = self._read_at + POLL_SECONDS

    def _draws(self, cost: Cost, mono: float) -> dict[str, Draw]:
        """Under the lock: the slice to take, kind by kind; the tokens' debt and give-back ride along."""
        elapsed = max(mono - self._taken_at, 0.05)
        self._taken_at = mono
        draws = {}
        for kind, rate in self.rates.items():
            self._use[kind] += SMOOTHING * (self._spent[kind] / elapsed - self._use[kind])
            self._spent[kind] = 0.0
            held = self._balance.held(kind, mono)
            wanted = min(max(self._waiting.get(kind, 0.0), self._use[kind] * SLICE_SECONDS), rate * SLICE_SECONDS)
            take = max(wanted - held, cost.get(kind, 0.0) - held, 0.0)
            owed = self._owed if kind == "tokens" else 0.0
            draws[kind] = Draw(take + max(owed, 0.0), rate, max(-owed, 0.0))
        return draws

    # -- after a call ---------------------------------------------------------------------

    def answered(self, estimate: float, outcome: Any) -> float | None:
        """A call ended with `outcome` (its result or exception): its token charge corrected from usage.

        Returns the seconds to pause the name for when the outcome asks everyone to keep away
        (`RetryLater` with a wait); the caller then calls `pause` (it writes to the database).
        """
        if isinstance(outcome, RetryLater):
            return outcome.after_seconds if outcome.after_seconds else None
        used = used_tokens(outcome) if self.counts_tokens else None
        if used is not None:
            with self._cond:
                self._owed += used - estimate
                if used < estimate:  # room given back: a waiting call asks the database again at once
                    self._wait_until = 0.0
                    self._read_at = float("-inf")
                    self._cond.notify_all()
        return None

    def wake(self) -> None:
        """On the worker's loop, after `answered`: let the waiting coroutines look again at once."""
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def hold(self, seconds: float) -> float:
        """Stop this worker's calls under the name for `seconds`, at once; until when (epoch seconds)."""
        until = time.time() + seconds
        with self._cond:
            self._paused_until = max(self._paused_until, until)
        return until

    def publish(self, until: float) -> None:
        """Stop every loop's calls under the name until `until`, through the database (blocks on it).

        While the database is away only this worker holds the pause: others cannot be told.
        """
        try:
            self.book.pause(self.name, until)
        except AWAY as exc:
            log.warning("limit %s: could not publish a pause (%s); this worker holds it", self.name, short_reason(exc))

    def pause(self, seconds: float) -> None:
        """hold() here, then publish() for everyone."""
        self.publish(self.hold(seconds))
