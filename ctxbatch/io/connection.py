"""The one connection every part of the store shares: the client, the database, its collections.

The parts (queue, submissions, views, stats, decisions, alerts) reach a collection through this
object each time they use one and keep none of their own, so a rebind here is seen by all of them.

It follows the embedded server on its own. On the embedded default (`connect()` with no URI) the
server may come back on another port when its own was taken meanwhile (io/embedded.py). A pymongo
listener on the client notes every failed heartbeat and failed command; the next use of a
collection then reads where the record says the server runs (a small file) and rebinds there if
it moved. While the server answers this costs one flag test per collection reached: no round trip.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import pymongo
from pymongo import MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
    ServerHeartbeatFailedEvent,
    ServerHeartbeatListener,
    ServerHeartbeatStartedEvent,
    ServerHeartbeatSucceededEvent,
)

from ctxbatch.config import DEFAULT_QUEUE
from ctxbatch.io import embedded
from ctxbatch.io.schema import (
    BATCH_INDEXES,
    CLAIMABLE_AGAIN,
    CONTEXT_INDEXES,
    FILE_INDEXES,
    IDEMPOTENCY_INDEXES,
    NO_TENANT,
    RETIRED_CONTEXT_INDEXES,
    STAGED_INDEXES,
    claim_due,
)

Document = dict[str, Any]
log = logging.getLogger("ctxbatch.io")
CLOSE_SECONDS = 1.0
MIGRATION_CHUNK = 10_000  # contexts given a `due` per write when an older database is upgraded


@dataclass(frozen=True)
class Binding:
    """A client and every collection of the database on it; replaced whole when the server moves."""

    client: MongoClient[Document]
    db: Database[Document]
    contexts: Collection[Document]
    batches: Collection[Document]
    # Submissions on their way in, and their staged chunks (io/staging.py).
    submissions: Collection[Document]
    staged: Collection[Document]
    alerts: Collection[Document]
    critical_errors: Collection[Document]
    sizing_decisions: Collection[Document]
    # Budgets and pauses shared by every loop (io/limits.py).
    limits: Collection[Document]
    # Idempotency keys and the first answers given under them (io/idempotency.py).
    idempotency: Collection[Document]

    # Each queue's claim order, as its loops set it (io/ordering.py).
    queues: Collection[Document]

    @classmethod
    def of(cls, client: MongoClient[Document], database: str) -> Binding:
        db = client[database]
        names = (
            "contexts",
            "batches",
            "submissions",
            "staged",
            "alerts",
            "critical_errors",
            "sizing_decisions",
            "limits",
            "idempotency",
            "queues",
        )
        return cls(client, db, **{name: db[name] for name in names})


class LostServerWatch(ServerHeartbeatListener, CommandListener):
    """Tells its connection when its client lost the server: a heartbeat or a command failed.

    A command's failure is told in the thread that ran it, before the caller sees the error, so
    the caller's next try already follows; a heartbeat's covers errors no command was sent for.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def failed(self, event: ServerHeartbeatFailedEvent | CommandFailedEvent) -> None:
        # A command the server refused carries its reply (with `ok`): that server is still there.
        if isinstance(event, CommandFailedEvent) and "ok" in event.failure:
            return
        self.connection.note_lost(self)

    def started(self, event: ServerHeartbeatStartedEvent | CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: ServerHeartbeatSucceededEvent | CommandSucceededEvent) -> None:
        pass


class Connection:
    """The MongoClient, the database and its collections, rebound when the embedded server moves."""

    def __init__(self, uri: str, database: str, client: MongoClient[Document] | None = None) -> None:
        self.uri = uri
        self.database_name = database
        # Set by connect() when the store is on the embedded default, whose port may move.
        self.embedded = False
        self._lock = threading.Lock()
        self._lost = False
        self._watch: LostServerWatch | None = None
        self._binding = Binding.of(client or self._new_client(uri), database)
        self._indexed = False

    def _new_client(self, uri: str) -> MongoClient[Document]:
        self._watch = LostServerWatch(self)
        return MongoClient(uri, tz_aware=True, connect=False, event_listeners=[self._watch])

    def note_lost(self, watch: LostServerWatch) -> None:
        # A client left behind by a move keeps failing its heartbeats: only the current one counts.
        if watch is self._watch:
            self._lost = True

    @property
    def bound(self) -> Binding:
        """The current client and collections, after following the embedded server if it was lost."""
        if self._lost and self.embedded:
            self.follow_embedded()
        return self._binding

    def follow_embedded(self) -> bool:
        """On the embedded default: rebind when the server now runs elsewhere; True if it moved."""
        if not self.embedded:
            return False
        with self._lock:
            uri = embedded.located()
            if uri is None:
                return False  # not back yet: asked again at the next use
            self._lost = False
            if uri == self.uri:
                return False
            # The old client is left open: an operation of another thread may be using it; it idles.
            log.warning("the embedded database moved to %s; following it", uri)
            self.uri = uri
            self._binding = Binding.of(self._new_client(uri), self.database_name)
            return True

    @property
    def client(self) -> MongoClient[Document]:
        return self.bound.client

    @property
    def db(self) -> Database[Document]:
        return self.bound.db

    @property
    def contexts(self) -> Collection[Document]:
        return self.bound.contexts

    @property
    def batches(self) -> Collection[Document]:
        return self.bound.batches

    @property
    def submissions(self) -> Collection[Document]:
        return self.bound.submissions

    @property
    def staged(self) -> Collection[Document]:
        return self.bound.staged

    @property
    def idempotency(self) -> Collection[Document]:
        return self.bound.idempotency

    @property
    def queues(self) -> Collection[Document]:
        return self.bound.queues

    def ensure_indexes(self) -> None:
        """The queue's indexes, created once per connection (creating them again is a no-op there)."""
        if not self._indexed:
            binding = self.bound
            _retire_old_claim_indexes(binding.contexts)
            binding.contexts.create_indexes(CONTEXT_INDEXES)
            binding.batches.create_indexes(BATCH_INDEXES)
            binding.staged.create_indexes(STAGED_INDEXES)
            binding.db["files"].create_indexes(FILE_INDEXES)
            binding.idempotency.create_indexes(IDEMPOTENCY_INDEXES)
            self._indexed = True

    @property
    def files(self) -> Collection[Document]:
        return self.bound.db["files"]

    def close(self) -> None:
        # Closing ends the client's sessions on the server: bounded, or a server that is gone would
        # hold a closing worker or loop for the whole server selection timeout (30 s).
        with pymongo.timeout(CLOSE_SECONDS):
            self._binding.client.close()


def _retire_old_claim_indexes(contexts: Collection[Document]) -> None:
    """A database from before queues, tenants or `due`: its contexts get them, its old claim indexes go.

    Contexts from before queues join the default queue; every context has no tenant; those that may
    be claimed again (pending, processing, failed, expired) get the `due` of strict priority, the
    order the old indexes claimed them in. The indexes are dropped last, so a migration cut off is
    done again, from where it stopped, at the next start. Every index costs each status change on
    nx-27017, so the retired ones are dropped, not kept.
    """
    current = {tuple(model.document["key"]) for model in CONTEXT_INDEXES}
    old_fields = set(RETIRED_CONTEXT_INDEXES.values()) - current
    retired = [
        name
        for name, index in contexts.index_information().items()
        if name in RETIRED_CONTEXT_INDEXES or tuple(field for field, _ in index["key"]) in old_fields
    ]
    if not retired:
        return
    contexts.update_many({"queue": {"$exists": False}}, {"$set": {"queue": DEFAULT_QUEUE}})
    contexts.update_many({"tenant": {"$exists": False}}, {"$set": {"tenant": NO_TENANT}})
    undue = {"due": {"$exists": False}, "status": {"$in": list(CLAIMABLE_AGAIN)}}
    while True:
        found = list(contexts.find(undue, {"priority": 1, "created_at": 1}).limit(MIGRATION_CHUNK))
        if not found:
            break
        strict = [claim_due(d["created_at"], d["priority"], None) for d in found]
        contexts.bulk_write(
            [UpdateOne({"_id": d["_id"]}, {"$set": {"due": due}}) for d, due in zip(found, strict, strict=True)],
            ordered=False,
        )
    for name in retired:
        contexts.drop_index(name)
