"""Fair shares between tenants: which tenants have work, and how one claim shares its batch among them.

A queue's claim reads each tenant's most urgent contexts as one range of the `queue_order` index
(queue, status, tenant, due). With a single tenant, or none (every context then holds NO_TENANT),
that is the claim's one find, as before tenants existed. To share a batch, the claim must know
which tenants have work without a find per tenant on every claim, so the census keeps, per queue,
the tenants with pending contexts: one index seek for any named tenant, and only when there is one
a `distinct` over the queue's pending contexts (~20 ms at 100k on nx-27017). It counts again after
CENSUS_SECONDS, or less often when counting grows slow (at most CENSUS_SHARE of the time); after
SHORT_CENSUS_SECONDS when a claim came back short; and as soon as a submission naming tenants has
arrived (each one counts itself in its queue's document, io/ordering.py, which the census reads
every SHORT_CENSUS_SECONDS). Until a tenant is counted its contexts wait; they are never out of reach.

Each claim visits at most TENANTS_PER_CLAIM tenants of the census (fewer for a small claim, so that
each gets about MIN_SHARE contexts), in turn (round robin: a claim starts where the last one
stopped), so with 1,000 tenants waiting a claim costs a few finds more than with one
(benchmarks/fairness.py (c)), and every tenant gets its turn. The tenants visited
share the batch by weight within the most urgent priority level any of them has; what one cannot
use (it has too little, or only less urgent work) goes to the others.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING

from ctxbatch.io.connection import Connection
from ctxbatch.io.ordering import QueueOrders
from ctxbatch.io.schema import NO_TENANT, Status, claimable_now, epoch_ms, eq, held_of, in_one_reply
from ctxbatch.io.views import Views

CENSUS_SECONDS = 1.0
SHORT_CENSUS_SECONDS = 0.2
CENSUS_SHARE = 0.02
TENANTS_PER_CLAIM = 8
# A tenant visited gets about this many contexts of the claim at least: a small claim visits fewer
# tenants, as each costs a find (~1.2 ms on nx-27017) and a claim of 20 costs ~6 ms.
MIN_SHARE = 8
# At most this many tenants at their cap are passed over (a count each) before a claim stops looking.
CAPPED_PER_CLAIM = 4 * TENANTS_PER_CLAIM
# What the claim reads of each context it finds: its order and tenant, and what the Claim keeps.
CLAIM_FIELDS = {"_id": 1, "attempts": 1, "priority": 1, "batch_id": 1, "due": 1, "tenant": 1}

Document = dict[str, Any]


@dataclass(frozen=True)
class TenantShares:
    """How claims share batches among tenants: `weights` (a tenant not named weighs 1) and
    `in_flight`, the most contexts of one tenant processing at once over every loop (None: no cap)."""

    weights: Mapping[str, float] = field(default_factory=dict)
    in_flight: int | None = None

    def weight(self, tenant: str) -> float:
        return float(self.weights.get(tenant, 1.0))

    def capped(self, tenant: str) -> bool:
        """Whether `in_flight` applies to this tenant: a named one (contexts of no tenant are not one's)."""
        return self.in_flight is not None and tenant != NO_TENANT


EQUAL_SHARES = TenantShares()


@dataclass
class _Count:
    tenants: list[str]
    at: float
    took: float  # seconds the count took
    submissions: int  # the queue's submissions naming tenants when counted
    short: bool = False
    turn: int = 0  # where the next claim starts in `tenants`
    asked: float = 0.0  # when the queue's submissions naming tenants were last looked at
    stale: bool = False  # a submission naming tenants arrived since

    def old(self, now: float) -> bool:
        every = SHORT_CENSUS_SECONDS if self.short else CENSUS_SECONDS
        return now - self.at >= max(every, self.took / CENSUS_SHARE)


class TenantCensus:
    """Per queue, the tenants with pending contexts as last counted, and whose turn it is."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.orders = QueueOrders(connection)
        self._counts: dict[str, _Count] = {}

    def tenants(self, queue: str) -> list[str]:
        """The queue's tenants with pending work, counted again when the count is old or a submission
        naming tenants arrived since (looked at every SHORT_CENSUS_SECONDS: one find of one document)."""
        count = self._counts.get(queue)
        now = time.monotonic()
        if count is not None and not count.old(now) and now - count.asked >= SHORT_CENSUS_SECONDS:
            count.asked = now
            count.stale = self.orders.tenant_submissions(queue) != count.submissions
        if count is None or count.stale or count.old(now):
            submissions = self.orders.tenant_submissions(queue)
            tenants = self._count(queue)
            took = time.monotonic() - now
            turn = count.turn if count else 0
            count = self._counts[queue] = _Count(tenants, now, took, submissions, turn=turn, asked=now)
        return count.tenants

    def _count(self, queue: str) -> list[str]:
        contexts = self.connection.contexts
        pending = {"queue": eq(queue), "status": eq(Status.PENDING.value)}
        # One seek of the claim index: the first named tenant, if any; most queues have none.
        if contexts.find_one({**pending, "tenant": {"$gt": NO_TENANT}}, {"tenant": 1}) is None:
            return [NO_TENANT]
        found = sorted(name for name in contexts.distinct("tenant", pending) if isinstance(name, str))
        return found or [NO_TENANT]  # all claimed since the seek

    def turns(self, queue: str) -> list[str]:
        """The census's tenants from the one whose turn it is, round."""
        tenants = self.tenants(queue)
        turn = self._counts[queue].turn % max(len(tenants), 1)
        return tenants[turn:] + tenants[:turn]

    def advance(self, queue: str, by: int) -> None:
        self._counts[queue].turn += by

    def drop(self, queue: str, tenant: str) -> None:
        """`tenant` had nothing claimable: left out until the next count."""
        count = self._counts.get(queue)
        if count is not None and tenant in count.tenants and len(count.tenants) > 1:
            count.tenants.remove(tenant)

    def came_back_short(self, queue: str) -> None:
        """A claim found less than it wanted: count again soon, a tenant may have arrived."""
        if queue in self._counts:
            self._counts[queue].short = True


def visits(wanted: int) -> int:
    """How many tenants a claim of `wanted` contexts visits at most: two at least, so that a claim is
    shared whenever two tenants have work."""
    return min(TENANTS_PER_CLAIM, max(2, -(-wanted // MIN_SHARE)), wanted)


def split(wanted: int, tenants: Sequence[str], shares: TenantShares) -> tuple[dict[str, int], int]:
    """`wanted` shared among `tenants` by weight; and how many got one of the odd contexts.

    Each tenant gets the whole part of its share; the odd contexts go one each by the largest part
    left over, ties in the order given (whose turn it is), so that turns rotate them.
    """
    total = sum(shares.weight(t) for t in tenants)
    exact = {t: wanted * shares.weight(t) / total for t in tenants}
    parts = {t: int(share) for t, share in exact.items()}
    odd = wanted - sum(parts.values())
    by_rest = sorted(tenants, key=lambda t: -(exact[t] - parts[t]))  # stable: ties keep the turn order
    for tenant in by_rest[:odd]:
        parts[tenant] += 1
    return parts, min(odd, len(tenants))


def urgency(
    levels: Mapping[str, tuple[int, int]], aging_seconds: float | None, now_ms: int
) -> Callable[[Document], int]:
    """A found context's priority level now, as a rank (0 the most urgent), for sharing within a level.

    With aging, a context's priority now is what is left of it after its wait: (due - now) / aging.
    """
    lows = sorted(low for low, _ in levels.values())

    def rank(priority: float) -> int:
        return max(sum(1 for low in lows if low <= priority) - 1, 0)

    if aging_seconds is None:
        return lambda doc: rank(doc["priority"])
    if aging_seconds == 0:
        return lambda doc: 0  # oldest first: one level
    per_priority = aging_seconds * 1000
    return lambda doc: rank(max((doc["due"] - now_ms) / per_priority, 0))


def pick(
    found: Mapping[str, list[Document]],
    wanted: int,
    shares: TenantShares,
    level: Callable[[Document], int],
) -> list[Document]:
    """The `wanted` contexts the claim takes of those found per tenant (each tenant's in `due` order).

    The most urgent level first; within a level the tenants take turns by weight: a tenant's k-th
    context of the level comes at k / weight, ties by `due`.
    """
    keyed = []
    for tenant, docs in found.items():
        taken: Counter[int] = Counter()
        for doc in docs:
            at = level(doc)
            taken[at] += 1
            keyed.append(((at, taken[at] / shares.weight(tenant), doc["due"]), doc))
    keyed.sort(key=lambda entry: entry[0])
    return [doc for _, doc in keyed[:wanted]]


def to_read_further(
    found: Mapping[str, list[Document]],
    asked: Mapping[str, int],
    picked: list[Document],
    wanted: int,
    level: Callable[[Document], int],
) -> list[str]:
    """The tenants whose further contexts the claim should read: it is short, or they may hold work
    more urgent than some it picked. A tenant may have more when it filled what was asked of it."""
    fuller = [t for t, docs in found.items() if docs and len(docs) >= asked[t]]
    if len(picked) < wanted:
        return fuller
    worst = max((level(doc) for doc in picked), default=0)
    return [t for t in fuller if level(found[t][-1]) < worst]


class SharedClaims:
    """A queue's part of each claim, shared among its tenants; the census of who has work."""

    def __init__(self, connection: Connection, views: Views) -> None:
        self.connection = connection
        self.views = views
        self.census = TenantCensus(connection)

    def first(
        self, queue: str, wanted: int, now: dt.datetime, aging_seconds: float | None, shares: TenantShares
    ) -> list[dict[str, Any]]:
        """A queue's part of the claim, shared among the tenants whose turn it is (the module's note).

        With one tenant, or none, this is one find; with more, one per tenant visited (at most
        TENANTS_PER_CLAIM), and once more for those that may hold more than their share was.
        """
        turns = self.census.turns(queue)
        room, visited, considered = self._visit(turns, shares, wanted)
        if not visited:  # every tenant considered is at its cap
            self.census.advance(queue, considered)
            return []
        parts, odd = split(wanted, visited, shares)
        given = [t for t in visited if parts[t] > 0]
        # The whole census considered: the odd contexts go round; else the next tenants' turn comes.
        self.census.advance(queue, odd if considered == len(turns) else turns.index(given[-1]) + 1)
        lookahead = 1 if len(given) > 1 else 0  # one more each tells who may have more to give

        def within_room(tenant: str, n: int) -> int:
            return min(n, room[tenant]) if tenant in room else n

        asked = {t: within_room(t, parts[t] + lookahead) for t in given}
        found = {t: self._tenant_first(queue, t, now, asked[t]) for t in given}
        level = urgency(self.views.levels, aging_seconds, epoch_ms(now))
        taken = pick(found, wanted, shares, level)
        further = [t for t in to_read_further(found, asked, taken, wanted, level) if within_room(t, wanted) > asked[t]]
        for tenant in further:
            asked[tenant] = within_room(tenant, len(found[tenant]) + wanted)
            found[tenant] = self._tenant_first(queue, tenant, now, asked[tenant])
        if further:
            taken = pick(found, wanted, shares, level)
        for tenant, docs in found.items():
            if not docs:
                self.census.drop(queue, tenant)
        if len(taken) < wanted:
            self.census.came_back_short(queue)
        return taken

    def _tenant_first(self, queue: str, tenant: str, now: dt.datetime, limit: int) -> list[dict[str, Any]]:
        """A tenant's `limit` most urgent claimable contexts of the queue: one range of the `queue_order` index."""
        cursor = self.connection.contexts.find(claimable_now(now, queue, tenant), CLAIM_FIELDS).sort("due", ASCENDING)
        return list(in_one_reply(cursor.limit(limit), limit))

    def _running(self, tenant: str) -> int:
        # The `finished` index's status: processing contexts are few, however many wait.
        return self.views.count({"status": eq(Status.PROCESSING.value), "tenant": eq(tenant)})

    def _visit(self, turns: list[str], shares: TenantShares, wanted: int) -> tuple[dict[str, int], list[str], int]:
        """The tenants this claim visits, in turn, passing over those at their cap; how many more each
        capped one may have processing (`limits.tenant_in_flight`); and how many tenants it considered."""
        room: dict[str, int] = {}
        visited: list[str] = []
        considered = 0
        for tenant in turns:
            if len(visited) == visits(wanted) or considered == CAPPED_PER_CLAIM:
                break
            considered += 1
            if shares.capped(tenant):
                room[tenant] = max((shares.in_flight or 0) - self._running(tenant), 0)
                if not room[tenant]:
                    continue
            visited.append(tenant)
        return room, visited, considered

    def within_caps(self, held: list[dict[str, Any]], token: str, shares: TenantShares) -> list[dict[str, Any]]:
        """Gives back what took a tenant past its cap: another loop claimed for it at the same time.

        Both loops may give back, leaving the tenant under its cap until the next claim: never over
        it while an engine runs, since what is given back was never started.
        """
        over: list[str] = []
        for tenant in {d["tenant"] for d in held if shares.capped(d["tenant"])}:
            excess = self._running(tenant) - (shares.in_flight or 0)
            if excess > 0:
                mine = sorted((d for d in held if d["tenant"] == tenant), key=lambda d: d["due"])
                over += [d["_id"] for d in mine[-excess:]]
        if over:
            self.connection.contexts.update_many(
                held_of(token, over), {"$set": {"status": Status.PENDING.value}, "$inc": {"attempts": -1}}
            )
        return [d for d in held if d["_id"] not in set(over)]
