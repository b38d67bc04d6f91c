"""A state machine over the store: submit, claim, settle, renew, reap, cancel, retry by two owners.

Hypothesis drives any order and interleaving against the real server, and after every step checks
the store against a model: never two owners of a context, nothing lost, counts consistent, and a
write-back by a lease that lost its contexts changes nothing (fencing).
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from pymongo import MongoClient

from ctxbatch.io import Claim, ContextStore
from ctxbatch.io.schema import epoch_ms, utcnow

OWNERS = ("loop-a", "loop-b")
MAX_STORE_SESSIONS = 1
_uri: dict[str, str] = {}


class StoreMachine(RuleBasedStateMachine):
    """The model: each context's status and, while processing, the token of the claim holding it."""

    def __init__(self) -> None:
        super().__init__()
        self.store = ContextStore(_uri["uri"], f"machine_{id(self):x}", client=_uri_client())
        self.status: dict[str, str] = {}
        self.holder: dict[str, str] = {}
        self.batch_of: dict[str, str] = {}
        self.claims: dict[str, list[Claim]] = {owner: [] for owner in OWNERS}

    @initialize()
    def clean(self) -> None:
        self.store.client.drop_database(self.store.database_name)

    def teardown(self) -> None:
        self.store.client.drop_database(self.store.database_name)

    # -- rules ----------------------------------------------------------------------------

    @rule(n=st.integers(1, 4))
    def submit(self, n: int) -> None:
        batch_id = self.store.submit([{"payload": {"n": i}} for i in range(n)])
        for doc in self.store.contexts.find({"batch_id": {"$eq": batch_id}}, {"_id": 1}):
            self.status[doc["_id"]] = "pending"
            self.batch_of[doc["_id"]] = batch_id

    @rule(owner=st.sampled_from(OWNERS), n=st.integers(1, 5))
    def claim(self, owner: str, n: int) -> None:
        claim = self.store.claim(n, owner, 60)
        claimable = [cid for cid, s in self.status.items() if s == "pending"]
        assert len(claim.ids) == min(n, len(claimable))
        for cid in claim.ids:
            assert self.status[cid] == "pending", f"{cid} claimed while {self.status[cid]}"
            self.status[cid] = "processing"
            self.holder[cid] = claim.token
        if claim.ids:
            self.claims[owner].append(claim)

    def _held(self, claim: Claim) -> list[str]:
        return [cid for cid in claim.ids if self.holder.get(cid) == claim.token and self.status[cid] == "processing"]

    @precondition(lambda self: any(self.claims.values()))
    @rule(data=st.data(), how=st.sampled_from(["complete", "fail", "release"]))
    def settle(self, data: st.DataObject, how: str) -> None:
        owner = data.draw(st.sampled_from([o for o in OWNERS if self.claims[o]]))
        claim = self.claims[owner].pop(data.draw(st.integers(0, len(self.claims[owner]) - 1)))
        held = self._held(claim)
        if how == "complete":
            report = self.store.complete(claim, {cid: {"by": owner} for cid in claim.ids})
            after = "completed"
        elif how == "fail":
            error = {"type": "E", "message": "m", "traceback": ""}
            report = self.store.fail(claim, {cid: error for cid in claim.ids}, retry_at=None)
            after = "failed"
        else:
            report = self.store.release(claim)
            after = "pending"
        # Fencing: only what this lease still held changed; the rest is reported lost.
        assert report.written == len(held)
        assert set(report.lost) == set(claim.ids) - set(held)
        for cid in held:
            self.status[cid] = after
            self.holder.pop(cid, None)

    @precondition(lambda self: any(self.claims.values()))
    @rule(owner=st.sampled_from(OWNERS))
    def renew(self, owner: str) -> None:
        for claim in self.claims[owner]:
            assert self.store.renew(claim, 60) == len(self._held(claim))

    @precondition(lambda self: any(self.claims.values()))
    @rule(owner=st.sampled_from(OWNERS))
    def expire_and_reap(self, owner: str) -> None:
        # What the passing of the lease does, without the wait: its expiry moves into the past.
        tokens = [c.token for c in self.claims[owner]]
        past = epoch_ms(utcnow()) - 1
        self.store.contexts.update_many({"lease.token": {"$in": tokens}}, {"$set": {"lease.expires_ms": past}})
        self.store.reap_expired()
        for cid, token in list(self.holder.items()):
            if token in tokens and self.status[cid] == "processing":
                self.status[cid] = "pending"
                del self.holder[cid]

    @precondition(lambda self: bool(self.batch_of))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        batch_id = data.draw(st.sampled_from(sorted(set(self.batch_of.values()))))
        changed = self.store.cancel(batch_id)
        mine = [c for c, b in self.batch_of.items() if b == batch_id and self.status[c] == "pending"]
        assert changed == len(mine)
        for cid in mine:
            self.status[cid] = "cancelled"

    @precondition(lambda self: bool(self.batch_of))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        batch_id = data.draw(st.sampled_from(sorted(set(self.batch_of.values()))))
        changed = self.store.retry(batch_id)
        mine = [c for c, b in self.batch_of.items() if b == batch_id and self.status[c] == "failed"]
        assert changed == len(mine)
        for cid in mine:
            self.status[cid] = "pending"

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def matches_the_model(self) -> None:
        stored = {d["_id"]: d for d in self.store.contexts.find({}, {"status": 1, "lease": 1})}
        assert set(stored) == set(self.status), "a context was lost or appeared"
        for cid, doc in stored.items():
            assert doc["status"] == self.status[cid], cid
            if doc["status"] == "processing":
                # One lease, the model's: never two owners.
                assert doc["lease"]["token"] == self.holder[cid]

    @invariant()
    def counts_are_consistent(self) -> None:
        for batch_id in set(self.batch_of.values()):
            counts = self.store.batch_status(batch_id)["counts"]
            mine = [self.status[c] for c, b in self.batch_of.items() if b == batch_id]
            assert counts["total"] == len(mine)
            for status in ("pending", "processing", "completed", "failed", "cancelled"):
                assert counts[status] == mine.count(status), (batch_id, status)


_clients: list[MongoClient[dict[str, Any]]] = []


def _uri_client() -> MongoClient[dict[str, Any]]:
    if not _clients:
        _clients.append(MongoClient(_uri["uri"], tz_aware=True))
    return _clients[0]


def test_the_store_keeps_its_promises_under_any_interleaving(mongo_uri: str) -> None:
    _uri["uri"] = mongo_uri
    try:
        run_state_machine_as_test(
            StoreMachine,
            settings=settings(
                max_examples=25,
                stateful_step_count=20,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        for client in _clients:
            client.close()
        _clients.clear()
