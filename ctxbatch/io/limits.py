"""Budgets and pauses shared by every worker of every loop on the database: the `limits` collection.

One document per limit name (`limits.name`, default `default`):
`{_id: name, requests: {tat}, tokens: {tat}, paused_until, updated_at}`, times in epoch seconds.

A budget is a GCRA (generic cell rate algorithm, as redis-cell and Stripe's limiters count): each
kind keeps a theoretical arrival time `tat`, the moment its budget would be spent had every unit
taken so far been spaced 1/rate apart. Taking n units at `now` is allowed when, after it, `tat` is at
most `burst` seconds ahead of `now` (or, for one take larger than the burst, when nothing is ahead),
and moves `tat` to max(tat, now) + n / rate. So any span of W seconds grants at most
rate x (W + burst) units (or rate x W + the largest take). Units given back (a call used fewer tokens
than estimated) lower `tat` by n / rate, never below `now`: a give-back corrects what was charged,
it never banks credit for later. Each change is a compare-and-set on the `tat`s read, retried when
another worker won the race, so two workers never both spend the same room.

A pause (`paused_until`, raised by `$max`: a later pause always wins) stops every call under the
name until then: the answer to a Retry-After.

Clocks: `now` is the caller's wall clock (time.time()). Loops on different hosts share a budget as
well as their clocks agree (NTP keeps them within milliseconds; a second of skew moves a worker's
view of the budget and of a pause by that second).
"""

from __future__ import annotations

import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from ctxbatch.io.connection import Connection
from ctxbatch.io.schema import eq

KINDS = ("requests", "tokens")
# Compare-and-set tries before a take gives up for now (the caller asks again shortly).
CAS_TRIES = 20
# Seconds a take may come early: ten takes of a tenth make one second's worth (floats do not quite),
# and nx-27017 keeps 15 significant digits of a $set double, ~10 us of an epoch in seconds.
EPSILON = 1e-4


@dataclass(frozen=True)
class Draw:
    """What one worker asks of one kind of budget: `take` units now at `rate` per second, `give_back` unused ones."""

    take: float
    rate: float
    give_back: float = 0.0


@dataclass(frozen=True)
class Granted:
    """A take's answer: whether every kind was granted, else the seconds to wait; and the pause read."""

    granted: bool
    wait: float
    paused_until: float
    applied: bool = True  # False: every compare-and-set lost, nothing was written (give-backs included)


def gcra(tat: float, now: float, draw: Draw, burst: float) -> tuple[float, float]:
    """(the new tat, 0) when `draw.take` is allowed at `now`; else (the tat with the give-back only, the wait).

    Pure: `burst` is in seconds of the rate (1.0: one second's worth may be taken ahead).
    """
    base = given_back(max(tat, now), now, draw.give_back, draw.rate)
    cost = draw.take / draw.rate
    ahead = max(burst - cost, 0.0)  # how far ahead base may be: a take larger than the burst needs nothing ahead
    if base - now <= ahead + EPSILON:
        return base + cost, 0.0
    return base, base - now - ahead


def given_back(tat: float, now: float, units: float, rate: float) -> float:
    """`tat` lowered by `units` given back, never below `now` (a tat already past stays as it is)."""
    if units <= 0 or tat <= now:
        return tat
    return max(tat - units / rate, now)


class LimitBook:
    """The `limits` collection: one document per limit name."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    @property
    def limits(self) -> Collection[dict[str, Any]]:
        return self.connection.bound.limits

    def take(self, name: str, draws: dict[str, Draw], burst: float, now: float | None = None) -> Granted:
        """Take every kind's draw at once, or none of them (give-backs are applied either way).

        One find and one conditional update while no other worker takes at the same moment; an
        empty `draws` is a read of the pause alone.
        """
        for _ in range(CAS_TRIES):
            doc = self._document(name)
            paused = float(doc.get("paused_until", 0.0))
            at = time.time() if now is None else now
            old = {kind: float(doc.get(kind, {}).get("tat", 0.0)) for kind in draws}
            new, wait = {}, 0.0
            for kind, draw in draws.items():
                new[kind], kind_wait = gcra(old[kind], at, draw, burst)
                wait = max(wait, kind_wait)
            if wait > 0:  # no kind is taken unless all are: keep only the give-backs
                new = {kind: given_back(old[kind], at, draw.give_back, draw.rate) for kind, draw in draws.items()}
            if new == old:
                return Granted(False, wait, paused) if wait > 0 else Granted(True, 0.0, paused)
            # Fenced on the tats as read back, never as computed: nx-27017 keeps 15 significant digits
            # of a $set double (10 us of an epoch), so a computed value may not equal the stored one.
            fence = {"_id": eq(name), **{f"{kind}.tat": eq(tat) for kind, tat in old.items()}}
            change = {**{f"{kind}.tat": tat for kind, tat in new.items()}, "updated_at": at}
            if self.limits.update_one(fence, {"$set": change}).matched_count:
                return Granted(wait == 0, wait, paused)
        return Granted(False, 0.01, 0.0, applied=False)  # lost every race: many workers took at once; ask again soon

    def pause(self, name: str, until: float) -> None:
        """Stop every call under `name` until `until` (epoch seconds); a pause already later stays."""
        self.limits.update_one(
            {"_id": eq(name)}, {"$max": {"paused_until": until}, "$set": {"updated_at": time.time()}}, upsert=True
        )

    def paused_until(self, name: str) -> float:
        """Until when calls under `name` are paused (epoch seconds; 0 when never paused)."""
        doc = self.limits.find_one({"_id": eq(name)}, {"paused_until": 1})
        return float(doc.get("paused_until", 0.0)) if doc else 0.0

    def _document(self, name: str) -> dict[str, Any]:
        found = self.limits.find_one({"_id": eq(name)})
        if found is not None and all(kind in found for kind in KINDS):
            return found
        # First use of the name (or of a kind): each tat starts at 0, i.e. the whole burst is free.
        start = {kind: {"tat": 0.0} for kind in KINDS if found is None or kind not in found}
        with suppress(DuplicateKeyError):  # another worker's upsert made it first
            self.limits.update_one({"_id": eq(name)}, {"$setOnInsert": {"paused_until": 0.0}}, upsert=True)
        for kind, value in start.items():
            self.limits.update_one({"_id": eq(name), kind: {"$exists": False}}, {"$set": {kind: value}})
        return self.limits.find_one({"_id": eq(name)}) or {}
