"""Fair shares between tenants: which tenants have work, and how one claim shares its batch among them.

A queue's claim reads each tenant's most urgent contexts as one range of the `queue_due` index
(queue, status, tenant, due). With a single tenant, or none (every context then holds NO_TENANT),
that is the claim's one find, as before tenants existed. To share a batch, the claim must know
which tenants have work without a find per tenant on every claim, so the census keeps, per queue,
the tenants with pending contexts, counted at most every CENSUS_SECONDS (and SHORT_CENSUS_SECONDS
after a claim came back short): one index seek for any named tenant, and only when there is one a
`distinct` over the queue's pending contexts (~20 ms at 100k on nx-27017). A tenant that arrived
since is seen at the next count; until then its contexts wait, never out of reach.

Each claim visits at most TENANTS_PER_CLAIM tenants of the census, in turn (round robin: a claim
starts where the last one stopped), so with 1,000 tenants waiting a claim costs a few finds more
than with one (benchmarks/fairness.py (c)), and every tenant gets its turn. The tenants visited
share the batch by weight within the most urgent priority level any of them has; what one cannot
use (it has too little, or only less urgent work) goes to the others.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ctxbatch.io.connection import Connection
from ctxbatch.io.schema import NO_TENANT, Status, eq

CENSUS_SECONDS = 1.0
SHORT_CENSUS_SECONDS = 0.2
CENSUS_SHARE = 0.02
TENANTS_PER_CLAIM = 8

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
    short: bool = False
    turn: int = 0  # where the next claim starts in `tenants`

    def old(self, now: float) -> bool:
        every = SHORT_CENSUS_SECONDS if self.short else CENSUS_SECONDS
        return now - self.at >= max(every, self.took / CENSUS_SHARE)


class TenantCensus:
    """Per queue, the tenants with pending contexts as last counted, and whose turn it is."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._counts: dict[str, _Count] = {}

    def tenants(self, queue: str) -> list[str]:
        """The queue's tenants with pending work, counted again when the count is old."""
        count = self._counts.get(queue)
        now = time.monotonic()
        if count is None or count.old(now):
            tenants = self._count(queue)
            took = time.monotonic() - now
            count = self._counts[queue] = _Count(tenants, now, took, turn=count.turn if count else 0)
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
