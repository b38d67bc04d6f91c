"""A claim on contexts (the lease that fences every write back) and a write's report."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from ctxbatch.io.usage import no_usage


@dataclass
class Claim:
    """Contexts held under one lease token; small and picklable, so it travels to Dask workers."""

    token: str
    owner: str
    expires_at: dt.datetime
    ids: list[str] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    batch_ids: list[str] = field(default_factory=list)
    # Each context's batch, for the usage summed per batch at settle. Its values are the very
    # strings of `batch_ids` (see Queue.claim), which pickle writes once and then refers to.
    batch_of: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"<Claim {self.token[:8]} owner={self.owner!r} contexts={len(self.ids)}>"

    def subset(self, ids: list[str]) -> Claim:
        """The same lease over some of its contexts (one partition's), and only their batches."""
        batch_of = {i: self.batch_of[i] for i in ids if i in self.batch_of}
        return Claim(
            self.token,
            self.owner,
            self.expires_at,
            list(ids),
            {i: self.attempts[i] for i in ids},
            sorted(set(batch_of.values())) if self.batch_of else list(self.batch_ids),
            batch_of,
        )

    def split(self, parts: int) -> list[Claim]:
        """The claim as `parts` contiguous, near-equal claims under the same lease (one per partition).

        Claim order is priority order, so the early parts hold the urgent contexts.
        """
        parts = max(1, min(parts, len(self.ids)))
        size, extra = divmod(len(self.ids), parts)
        pieces, start = [], 0
        for i in range(parts):
            end = start + size + (1 if i < extra else 0)
            pieces.append(self.subset(self.ids[start:end]))
            start = end
        return pieces


@dataclass(frozen=True)
class WriteReport:
    """What a fenced write changed, and which contexts the lease no longer held."""

    written: int
    lost: list[str]
    usage: dict[str, int] = field(default_factory=no_usage)  # the tokens of the results written (io/usage.py)

    @property
    def ok(self) -> bool:
        return not self.lost
