"""Lease upkeep: renew the loop's claims while they run, and return other loops' expired leases."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable

from ctxbatch.config import WorkerSettings
from ctxbatch.io import Claim, ContextStore, utcnow


class LeaseKeeper:
    """Every quarter lease (0.2 s to 10 s), renews the claims in flight that have spent half their
    lease, and reaps expired leases.

    A renewal rewrites every context the claim holds (and, on nx-27017, each of their index entries):
    a claim with more than half its lease left is not renewed, so a batch shorter than half a lease
    costs no renewal at all. It is still renewed at least a quarter lease (or 10 s) before it expires.
    """

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
        """Renew the claims past half their lease and reap expired leases; how many contexts were reaped."""
        renew_before = utcnow() + dt.timedelta(seconds=self.lease_seconds / 2)
        for claim in claims:
            if claim.expires_at <= renew_before:
                self.store.renew(claim, self.lease_seconds)
        reaped = self.store.reap_expired(max_attempts=self.max_attempts)
        self.store.tidy_submissions()  # the janitor of interrupted submissions
        self._due = time.monotonic() + self.every
        return reaped
