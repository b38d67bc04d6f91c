"""Lease upkeep: renew the loop's claims while they run, and return other loops' expired leases."""

from __future__ import annotations

import time
from collections.abc import Iterable

from ctxbatch.config import WorkerSettings
from ctxbatch.io import Claim, ContextStore


class LeaseKeeper:
    """Every quarter lease (0.2 s to 10 s), renews the claims in flight and reaps expired leases."""

    def __init__(self, store: ContextStore, settings: WorkerSettings) -> None:
        self.store = store
        self.lease_seconds = settings.lease_seconds
        # A context that keeps killing the process that runs it fails for good once its tries are spent.
        self.max_attempts = settings.retry.context_retries + 1
        self.every = max(0.2, min(settings.lease_seconds / 4, 10.0))
        self._due = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self._due

    def upkeep(self, claims: Iterable[Claim]) -> int:
        """Renew the claims and reap expired leases; how many contexts were reaped."""
        for claim in claims:
            self.store.renew(claim, self.lease_seconds)
        reaped = self.store.reap_expired(max_attempts=self.max_attempts)
        self.store.tidy_submissions()  # the janitor of interrupted submissions
        self._due = time.monotonic() + self.every
        return reaped
