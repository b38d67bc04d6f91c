"""A claim on contexts (the lease that fences every write back) and a write's report."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


@dataclass
class Claim:
    """Contexts held under one lease token; small and picklable, so it travels to Dask workers."""

    token: str
    owner: str
    expires_at: dt.datetime
    ids: list[str] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    batch_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"<Claim {self.token[:8]} owner={self.owner!r} contexts={len(self.ids)}>"

    def subset(self, ids: list[str]) -> Claim:
        """The same lease over some of its contexts (one partition's)."""
        return Claim(
            self.token,
            self.owner,
            self.expires_at,
            list(ids),
            {i: self.attempts[i] for i in ids},
            self.batch_ids,
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

    @property
    def ok(self) -> bool:
        return not self.lost
