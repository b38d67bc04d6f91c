"""ContextStore: the one object users hold — the queue of contexts and their batches in MongoDB.

It is made of parts over one shared connection (io/connection.py), each its own class: the queue
(io/queue.py: claim, settle, leases, cancel and retry), submissions (io/staging.py: staging and
the commit, which acknowledges them; io/moves.py: the move into the queue, the janitor;
io/idempotency.py: idempotency keys), views (io/views.py: status, results, listings,
counts), statistics (io/stats.py), the sizing decisions (io/decisions.py), what the sizer learned
(io/sizing_history.py), the alerts' state (io/alert_state.py), the limits every loop shares
(io/limits.py), OpenAI's files (io/files.py) and each queue's claim order (io/ordering.py).
Its methods say what each does and hand the work to its part.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pymongo
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database

from ctxbatch.config import DEFAULT_LEVELS, DEFAULT_QUEUE, IDEMPOTENCY_HOURS, LEASE_SECONDS, level_ranges
from ctxbatch.io import embedded, frames
from ctxbatch.io.alert_state import AlertBook
from ctxbatch.io.claims import Claim, WriteReport
from ctxbatch.io.connection import Connection
from ctxbatch.io.deadlines import Deadlines
from ctxbatch.io.decisions import SizingDecisions
from ctxbatch.io.files import Files, FileUpload
from ctxbatch.io.idempotency import IdempotencyKeys
from ctxbatch.io.limits import LimitBook
from ctxbatch.io.moves import Moves
from ctxbatch.io.ordering import QueueOrders
from ctxbatch.io.queue import Queue
from ctxbatch.io.schema import Status
from ctxbatch.io.sizing_history import SizingHistory
from ctxbatch.io.staging import BatchOptions, Submissions, Submitted
from ctxbatch.io.stats import (
    DEFAULT_WINDOW_SECONDS,
    TIMELINE_BUCKET_SECONDS,
    TIMELINE_WINDOW_SECONDS,
    Statistics,
    Stats,
)
from ctxbatch.io.tenants import EQUAL_SHARES, TenantShares
from ctxbatch.io.views import DEFAULT_BATCH_LIST, BatchStatus, InFlight, Views

if TYPE_CHECKING:
    import dask.dataframe as dd
    import pandas as pd

Document = dict[str, Any]


def mask_uri(uri: str) -> str:
    """The URI with its password replaced, fit for logs and reprs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class ContextStore:
    """The queue of contexts and their batches in one MongoDB database."""

    def __init__(
        self,
        uri: str,
        database: str = "ctxbatch",
        *,
        levels: Mapping[str, tuple[int, int]] | None = None,
        client: MongoClient[Document] | None = None,
        idempotency_hours: float = IDEMPOTENCY_HOURS,
    ) -> None:
        self.connection = Connection(uri, database, client)
        self.levels = dict(levels or level_ranges(DEFAULT_LEVELS))
        self._keys = IdempotencyKeys(self.connection, idempotency_hours)
        self._moves = Moves(self.connection, self._keys)
        self._submissions = Submissions(self.connection, self._moves, self._keys)
        self._deadlines = Deadlines(self.connection)
        self._views = Views(self.connection, self.levels, self._moves, self._deadlines)
        self._queue = Queue(self.connection, self._views, self._deadlines)
        self._statistics = Statistics(self.connection, self._views)
        self._files = Files(self.connection, self._submissions)
        self._decisions = SizingDecisions(self.connection)
        self._sizing_history = SizingHistory(self.connection)
        self._orders = QueueOrders(self.connection)
        self.alert_book = AlertBook(self.connection)
        """The alerts' shared state and the critical-error log (io/alert_state.py)."""
        self.limits = LimitBook(self.connection)
        """Budgets and pauses shared by every loop on the database, by limit name (io/limits.py)."""

    def __repr__(self) -> str:
        return f"<ContextStore {mask_uri(self.uri)} database={self.database_name!r}>"

    # -- the connection -------------------------------------------------------------------

    @property
    def uri(self) -> str:
        """The server's URI: the embedded server's current one when the store followed it."""
        return self.connection.uri

    @property
    def database_name(self) -> str:
        return self.connection.database_name

    @property
    def embedded(self) -> bool:
        """Whether the store is on the embedded default, whose server it follows when it moves."""
        return self.connection.embedded

    @embedded.setter
    def embedded(self, on_default: bool) -> None:
        self.connection.embedded = on_default

    @property
    def client(self) -> MongoClient[Document]:
        return self.connection.client

    @property
    def db(self) -> Database[Document]:
        return self.connection.db

    # The raw collections, as this store shows them: its own submissions wholly moved in.

    @property
    def contexts(self) -> Collection[Document]:
        self._moves.wait_own()
        return self.connection.contexts

    @property
    def batches(self) -> Collection[Document]:
        self._moves.wait_own()
        return self.connection.batches

    @property
    def submissions(self) -> Collection[Document]:
        self._moves.wait_own()
        return self.connection.submissions

    @property
    def staged(self) -> Collection[Document]:
        self._moves.wait_own()
        return self.connection.staged

    @property
    def idempotency(self) -> Collection[Document]:
        return self.connection.idempotency

    def follow_embedded(self) -> bool:
        """On the embedded default: reconnect when the server now runs elsewhere; True if it moved.

        The store does this on its own at its next operation after the database stopped answering
        (io/connection.py); calling it checks at once. The server comes back on its port when it
        can (io/embedded.py); this covers the case where that port was taken meanwhile.
        """
        return self.connection.follow_embedded()

    def close(self) -> None:
        """Close the client, once this store's own submissions are moved into the queue."""
        self._moves.wait_own()
        self.connection.close()

    def ping(self) -> float:
        """Round-trip time of a ping, in seconds; the server waited for as the client is configured to
        (serverSelectionTimeoutMS), even inside a longer `pymongo.timeout()`, which would replace it."""
        client = self.connection.client
        start = time.perf_counter()
        with pymongo.timeout(client.options.server_selection_timeout):
            client.admin.command("ping")
        return time.perf_counter() - start

    def ensure_indexes(self) -> None:
        """Create the queue's indexes (once per store)."""
        self.connection.ensure_indexes()

    # -- submit ---------------------------------------------------------------------------

    def submit(
        self,
        records: Iterable[Any] | pd.DataFrame,
        priority: int | None = None,
        name: str | None = None,
        *,
        queue: str = DEFAULT_QUEUE,
        completion_window: str | float | None = None,
        format: str | None = None,
        openai: Mapping[str, Any] | None = None,
        tenant: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Store a whole submission as one batch and return its id; all of it or nothing.

        Records are ctxbatch's (`payload`, `priority`, `key`, `custom_id`, `tenant`) or OpenAI batch
        lines (`custom_id`, `method`, `url`, `body`), recognised by the first record or forced with
        `format="openai"`. The batch goes to `queue` (a loop claims only its queues). `tenant` is
        the tenant of the records that name none (claims share batches among tenants). With a
        `completion_window` ("24h", "30m", "90s" or seconds), what is still pending when it has
        passed expires (io/deadlines.py). `openai` holds OpenAI's batch fields kept on the batch
        (endpoint, completion_window, metadata, input_file_id).

        It returns at the commit, the point of no return (docs/RELIABILITY.md): returned, the whole
        submission will be processed; raised or cut off before, none of it ever is. The move into
        the queue goes on in a thread of this process; the batch reads whole meanwhile (its contexts
        not yet moved count as pending) and this store's own claims and listings wait for it.

        With an `idempotency_key` (1 to 255 characters), a retry with the same key and the same
        content within `api.idempotency_hours` returns the first batch id and stores nothing; other
        content raises IdempotencyKeyReused; while the first is still being stored, it waits for it.
        """
        return self.submit_counted(
            records,
            priority,
            name,
            queue=queue,
            completion_window=completion_window,
            format=format,
            openai=openai,
            tenant=tenant,
            idempotency_key=idempotency_key,
        ).batch_id

    def submit_counted(
        self,
        records: Iterable[Any] | pd.DataFrame,
        priority: int | None = None,
        name: str | None = None,
        *,
        queue: str = DEFAULT_QUEUE,
        completion_window: str | float | None = None,
        format: str | None = None,
        openai: Mapping[str, Any] | None = None,
        tenant: str | None = None,
        idempotency_key: str | None = None,
        wait: bool = True,
    ) -> Submitted:
        """submit(), answered whole: (batch_id, count, replayed); `replayed` when an idempotency
        key's first answer was given again and nothing was stored.

        With `wait` False, a key whose first submission is still being stored raises
        IdempotencyKeyInUse at once rather than waiting (what the HTTP API answers 409 with).
        The records are streamed (an iterator is never held whole): validated, encoded and
        staged in chunks, and invisible until the whole submission is committed (io/staging.py).
        """
        options = BatchOptions.of(name, queue, completion_window, dict(openai or {}), tenant)
        return self._submissions.submit(records, priority, options, format, idempotency_key=idempotency_key, wait=wait)

    def wait_moved(self, batch_id: str | None = None) -> None:
        """Return once the batch (or every batch this store submitted) is wholly in the queue.

        Acknowledged batches are processed whether or not anyone waits: this waits only for their
        move into the queue (io/moves.py), taking a batch's over when its submitter stopped.
        """
        if batch_id is None:
            self._moves.wait_own()
        else:
            self._moves.await_moved(batch_id)

    def tidy_submissions(self) -> int:
        """The janitor of interrupted submissions (see io/moves.py); how many it settled."""
        return self._moves.tidy()

    # -- OpenAI files ----------------------------------------------------------------------

    def upload(self) -> FileUpload:
        """A new file on its way in (OpenAI's `/v1/files`): `write(data)` its bytes as they come, then
        `finish(filename, purpose)` -> the file object; `abandon()` it when anything failed.

        Each line is checked as an OpenAI batch request as it arrives (FileRefused names the line
        and field) and the bytes are stored in chunks of whole lines, never held whole (io/files.py).
        """
        return self._files.upload()

    def file(self, file_id: str) -> dict[str, Any]:
        """A stored file object: id, object, bytes, created_at, filename, purpose, status (FileNotFound)."""
        return self._files.get(file_id)

    def files_after(
        self, after: str | None = None, limit: int = 20, *, ascending: bool = False, purpose: str | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of stored files as file() shows them, newest first unless `ascending`, past the file
        `after` (FileNotFound if there is none), only those of `purpose` if given; and whether more follow."""
        return self._files.page(after, limit, ascending, purpose)

    def file_content(self, file_id: str) -> Iterator[bytes]:
        """A stored file's bytes as they were uploaded, chunk by chunk (FileNotFound at once)."""
        return self._files.content(file_id)

    def delete_file(self, file_id: str) -> None:
        """Delete a stored file (FileNotFound when there is none); batches made from it keep their contexts."""
        self._files.delete(file_id)

    def submit_file(
        self,
        file_id: str,
        *,
        endpoint: str,
        completion_window: str | float | None = "24h",
        metadata: Mapping[str, str] | None = None,
        queue: str = DEFAULT_QUEUE,
    ) -> tuple[str, int]:
        """A stored file's requests as one batch with OpenAI's fields; (batch id, contexts).

        Every line's url must be `endpoint`; when one is not, the batch is still made, `failed`, with
        no contexts and `errors` naming the line, as OpenAI's Batch API does.
        """
        fields = {
            "endpoint": endpoint,
            "completion_window": completion_window,
            "metadata": dict(metadata or {}),
            "input_file_id": file_id,
        }
        options = BatchOptions.of(None, queue, completion_window, fields)
        return self._files.submit(file_id, endpoint, options)

    # -- claim and settle -----------------------------------------------------------------

    def claim(
        self,
        n: int,
        owner: str,
        lease_seconds: float = LEASE_SECONDS,
        *,
        queues: Sequence[str] = (DEFAULT_QUEUE,),
        aging_seconds: float | None = None,
        shares: TenantShares = EQUAL_SHARES,
    ) -> Claim:
        """Take up to n claimable contexts of `queues` in their claim order (`due`), under a fresh lease.

        The order is fixed at submit: most urgent then oldest first, or with aging the longest
        waiting for its priority (io/ordering.py). When contexts of several tenants wait, the batch
        is shared among them by `shares` (weights, and a cap on each one's contexts processing)
        within the most urgent priority level; `aging_seconds` tells that level (io/tenants.py).

        When the database stops answering midway, the contexts this lease may have taken are
        given back (fenced by its token) at the start of the next claim, their try uncounted:
        otherwise they would sit under a lease nobody holds until it expired, and a context out
        of retries would then fail for good without having run.
        """
        self._moves.wait_own()
        return self._queue.claim(n, owner, lease_seconds, queues=queues, aging_seconds=aging_seconds, shares=shares)

    def order_queues(self, queues: Sequence[str], aging_seconds: float | None) -> list[str]:
        """Order what is submitted to `queues` from now on by `aging_seconds` (None: strict priority, 0:
        oldest first); what already waits keeps its order. Returns the queues whose order changed.

        A loop does this for its queues when it starts, from `worker.priorities` (io/ordering.py).
        """
        return self._orders.record(queues, aging_seconds)

    def queue_aging(self, queue: str = DEFAULT_QUEUE) -> float | None:
        """The aging submissions to `queue` are ordered by (None: strict priority)."""
        return self._orders.aging_of(queue)

    def settle(
        self,
        claim: Claim,
        results: Mapping[str, Any] | None = None,
        errors: Mapping[str, Mapping[str, Any]] | None = None,
        retry_at: Mapping[str, dt.datetime | None] | dt.datetime | None = None,
        release: Iterable[str] = (),
        deferred: Set[str] = frozenset(),
    ) -> WriteReport:
        """One fenced bulk write: complete `results`, fail or reschedule `errors`, release the rest.

        `retry_at` gives, per failed context (or for all), when it may run again; None fails it
        for good. Released contexts go back to `pending` as they were, their try uncounted.
        `deferred` names the rescheduled errors that are deferrals (RetryLater): their try is not
        counted in `attempts` but in `deferrals`. The usage the completed results report (OpenAI's
        `usage`, io/usage.py) is added to their batches' `usage` in the same write that stamps the
        batches, only for the results written (not those the lease lost); the report's `usage` sums it.
        """
        return self._queue.settle(claim, results, errors, retry_at, release, deferred)

    def complete(self, claim: Claim, results: Mapping[str, Any]) -> WriteReport:
        """Mark contexts completed with their results (fenced)."""
        return self._queue.complete(claim, results)

    def fail(
        self,
        claim: Claim,
        errors: Mapping[str, Mapping[str, Any]],
        retry_at: Mapping[str, dt.datetime | None] | dt.datetime | None = None,
    ) -> WriteReport:
        """Record errors: pending again from `retry_at`, or failed for good when it is None (fenced)."""
        return self._queue.fail(claim, errors, retry_at)

    def release(self, claim: Claim, ids: Iterable[str] | None = None) -> WriteReport:
        """Give contexts back unchanged (all of the claim by default), fenced."""
        return self._queue.release(claim, ids)

    def release_unanswered(self) -> int:
        """Give back what claims cut off by the database took; how many. Raises while it is still away."""
        return self._queue.release_unanswered()

    def load(self, claim: Claim) -> list[dict[str, Any]]:
        """The claim's contexts, whole documents in claim order, as long as its lease still holds them.

        Found by their ids (there is no lease index: it would cost every status change). Whole
        documents, as nx-27017 projects in Python, which costs it more than sending the rest.
        """
        return self._queue.load(claim)

    def held(self, claim: Claim) -> Claim:
        """The part of a claim its lease still holds, in claim order."""
        return self._queue.held(claim)

    def claimable(self, limit: int, queues: Sequence[str] = (DEFAULT_QUEUE,)) -> int:
        """How many contexts of `queues` could be claimed now, counting no further than `limit` (index-backed)."""
        self._moves.wait_own()
        return self._queue.claimable(limit, queues)

    def renew(self, claim: Claim, lease_seconds: float = LEASE_SECONDS) -> int:
        """Extend the lease; returns how many contexts it still holds."""
        return self._queue.renew(claim, lease_seconds)

    def reap_expired(self, max_attempts: int | None = None) -> int:
        """Return contexts whose lease expired to `pending`; those past max_attempts fail for good.

        A context that keeps killing the process that runs it (a poison row) would otherwise be
        reaped and re-run forever.
        """
        return self._queue.reap_expired(max_attempts)

    def cancel(self, batch_id: str) -> int:
        """Cancel the batch's pending contexts; returns how many."""
        self._moves.await_moved(batch_id)  # every context of it, not only those moved in so far
        return self._queue.cancel(batch_id)

    def retry(self, batch_id: str, *, expired: bool = False) -> int:
        """Send the batch's failed contexts back to `pending` with attempts reset; returns how many.

        With `expired`, its expired contexts instead, under a fresh completion window.
        """
        return self._queue.retry(batch_id, expired=expired)

    def expire_due(self) -> int:
        """Expire what is still pending in batches whose deadline passed (io/deadlines.py); how many."""
        return self._deadlines.expire_due()

    # -- views --------------------------------------------------------------------------

    def batch_status(self, batch_id: str) -> BatchStatus:
        """The batch status JSON of DESIGN.md (a dict; a table in Jupyter).

        `usage` ({input, output, total}, zeros when none) sums the tokens its completed results
        report (OpenAI's `usage`, io/usage.py), added as each fenced write lands. A batch whose
        contexts name tenants also has `tenants`: the counts of each tenant ("" for no tenant; not in
        list_batches(), where it would cost an aggregate per status and batch).
        """
        return self._views.batch_status(batch_id)

    def counts(self, batch_id: str) -> dict[str, int]:
        """The batch's contexts by status, and their total."""
        return self._views.counts(batch_id)

    def iter_results(self, batch_id: str, *, payload: bool = True) -> Iterator[dict[str, Any]]:
        """The batch's contexts one by one, in submission order (their `sort_id`), streamed."""
        self._moves.await_moved(batch_id)
        return self._views.iter_results(batch_id, payload=payload)

    def results(self, batch_id: str) -> pd.DataFrame:
        """The batch's contexts as a DataFrame (id, status, priority, payload, result, error, ...).

        The same columns and dtypes as results_frame(): text as Arrow strings, times as UTC to the
        millisecond, payload, result and error as Python objects.
        """
        self._moves.await_moved(batch_id)
        return self._views.results(batch_id)

    def results_frame(self, batch_id: str, chunksize: int = frames.CHUNKSIZE) -> dd.DataFrame:
        """The batch's contexts as a Dask DataFrame: results() for a batch too big for one pandas frame.

        Indexed by each context's position in its batch (`sort_id`, 0 to total - 1), `chunksize`
        positions a partition, with known divisions. Nothing is read until it is computed; then each
        partition is one range read by the process that runs it (the cluster's workers, with a
        distributed Client), over a connection of its own to this store's server and database.
        Columns and dtypes are results()'s: payload, result and error hold Python objects.
        """
        self._moves.await_moved(batch_id)
        positions = self._views.positions(batch_id)
        return frames.results_frame(self.uri, self.database_name, batch_id, positions, chunksize)

    def get_context(self, context_id: str) -> dict[str, Any]:
        """One context as users see it (ContextNotFound when there is none)."""
        self._moves.wait_own()
        return self._views.get_context(context_id)

    def status_counts(self) -> dict[str, int]:
        """Contexts of every batch by status."""
        self._moves.wait_own()
        return self._views.status_counts()

    def in_queues(self, queues: Sequence[str], statuses: Sequence[Status] | None = None) -> int:
        """How many contexts these queues hold (with these statuses, if given): index counts.

        Contexts are never deleted, so the count of every status grows only as contexts arrive. It is
        one count per queue, so a context that changes status meanwhile counts once; with statuses,
        one per status, in the order given.
        """
        self._moves.wait_own()
        return self._views.in_queues(queues, statuses)

    def queue_length(
        self, status: Status | str = Status.PENDING, batch_id: str | None = None, tenant: str | None = None
    ) -> dict[str, int]:
        """How many contexts (of the batch, of the tenant, if given) have this status, by priority level."""
        self._moves.wait_own()
        return self._views.queue_length(status, batch_id, tenant)

    def tenants_waiting(self, limit: int) -> dict[str | None, dict[str, int]]:
        """Pending and processing contexts of the `limit` tenants with the most, the others summed under
        None; {} when no named tenant has any (metrics label tenants only when they are in use)."""
        return self._views.tenants_waiting(limit)

    def in_flight(self) -> InFlight:
        """The batches under a lease now, across every loop: distinct lease tokens of `processing` contexts."""
        return self._views.in_flight()

    def drained(self, queues: Sequence[str] | None = None) -> bool:
        """Nothing pending, processing or on its way in (of `queues`, when given): lookups of one id, not counts.

        On its way in: a committed submission whose move into the queue was cut off (io/staging.py);
        the loop's janitor finishes it.
        """
        return self._views.drained(queues)

    def list_batches(
        self, status: Status | str | None = None, limit: int = DEFAULT_BATCH_LIST, queue: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest batches first, as batch_status() JSON; only those with `status`, of `queue`, if given.

        A batch's status is derived from its contexts, so a filter costs a count per batch looked at.
        `GET /api/batches` answers `{"batches": list_batches(...)}`, and so does `ctxbatch batches --json`.
        """
        self._moves.wait_own()
        return self._views.list_batches(status, limit, queue)

    def batches_after(
        self, after: str | None = None, limit: int = 20, having: str | None = None
    ) -> tuple[list[BatchStatus], bool]:
        """A page of batches, newest first, older than the batch `after`: up to `limit` as batch_status()
        JSON, only those with the field `having` (`endpoint`: OpenAI's batches) if given; and whether
        more follow."""
        self._moves.wait_own()
        return self._views.batches_after(after, limit, having)

    def results_page(
        self, batch_id: str, limit: int = 1000, cursor: str | None = None, *, payload: bool = True
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of iter_results(): up to `limit` contexts, and the cursor of the next page (None at the end).

        The cursor is opaque; it holds the `sort_id` the next page starts at (a context's position
        in its batch, given at submit). A page is a key range on the `results` index (batch_id,
        sort_id), so a deep page costs what the first does; `skip` would read every row before it.
        """
        self._moves.await_moved(batch_id)
        return self._views.results_page(batch_id, limit, cursor, payload=payload)

    # -- statistics -----------------------------------------------------------------------

    def stats(
        self, batch_id: str | None = None, window_seconds: float = DEFAULT_WINDOW_SECONDS, tenant: str | None = None
    ) -> Stats:
        """Throughput, success rate, latency and the queue over the last `window_seconds` (of one batch, of
        one tenant, if given).

        `completed`, `failed` and `retried` count contexts finished in the window (`retried`: the
        tries of those contexts that failed and ran again); over its completed contexts,
        `latency_seconds` is created -> finished, `processing_seconds` started (the last claim) ->
        finished, each as p50/p95/p99;
        `queue_length` counts pending contexts by priority level, `in_flight` processing ones;
        `tokens` ({input, output, total}) is the usage the window's completed results report, from
        the same sample as the percentiles (exact up to 1,000 completed, scaled past that), and
        `tokens_per_second` its total over the window.

        Throughput, each labelled: `throughput_per_second` is finished / the whole window (idle time
        included); `working_throughput_per_second` is finished / `working_seconds`, from when the
        work that finished first in the window started to the last finish (null with no such span);
        `recent_throughput_per_second` is finished in the last `recent_seconds` (60) / 60.
        """
        self._moves.wait_own()
        return self._statistics.stats(batch_id, window_seconds, tenant)

    def timeline(
        self,
        batch_id: str | None = None,
        window_seconds: float = TIMELINE_WINDOW_SECONDS,
        bucket_seconds: float = TIMELINE_BUCKET_SECONDS,
    ) -> pd.DataFrame:
        """One row per bucket of the last `window_seconds`, oldest first, indexed by the bucket's start (UTC).

        Columns: completed, failed (counts), throughput (finished per second), latency_p50 and
        latency_p95 (created -> finished of its completed contexts, seconds; NaN for a bucket
        with none, and from a sample of TIMELINE_SAMPLE_SIZE over the whole window past that).
        """
        return self._statistics.timeline(batch_id, window_seconds, bucket_seconds)

    def finished_counts(self, window_seconds: float = DEFAULT_WINDOW_SECONDS) -> dict[str, int]:
        """stats()'s completed, failed and retried alone: index reads only, for checks that run often."""
        return self._statistics.finished_counts(window_seconds)

    def oldest_pending(self, batch_id: str | None = None, level: str | None = None) -> dt.datetime | None:
        """When the oldest pending context (of the batch, of the level) was submitted; None when none waits."""
        return self._statistics.oldest_pending(batch_id, level)

    def seconds_since_progress(self) -> float:
        """Seconds since a context last finished, or since the oldest waiting work arrived if later; 0 with no work.

        Work is what is pending or processing: a queue that was idle for a day is not stalled the
        moment a new batch arrives.
        """
        return self._statistics.seconds_since_progress()

    # -- sizing decisions -----------------------------------------------------------------

    def record_decision(self, owner: str, row: Mapping[str, Any]) -> None:
        """Publish one sizing decision of the loop `owner` (its row: size, split, reason) for the dashboard."""
        self._decisions.record(owner, row)

    def recent_decisions(self, window_seconds: float, limit: int = 500) -> list[dict[str, Any]]:
        """The newest decisions of every loop within the window, oldest first (at most `limit`)."""
        return self._decisions.recent(window_seconds, limit)

    # -- what the dynamic sizer learned, per engine, queues and setup ------------------------

    def recall_sizing(self, key: str) -> dict[str, Any] | None:
        """What a run under `key` last kept (io/sizing_history.py), unless older than SIZING_HISTORY_DAYS."""
        return self._sizing_history.recall(key)

    def keep_sizing(self, key: str, fields: Mapping[str, Any]) -> None:
        """Keep what a run's sizer learned under `key`, for the next run."""
        self._sizing_history.keep(key, fields)

    def sizing_history(self, engine: str | None = None, queue: str | None = None) -> list[dict[str, Any]]:
        """What the dynamic sizer learned for `engine` (its name) on `queue`, or for every engine, queues and
        setup; newest first (`ctxbatch sizing`)."""
        return self._sizing_history.entries(engine, queue)

    def forget_sizing_history(self, engine: str | None = None, queue: str | None = None) -> int:
        """Forget what was learned for `engine` (its name) on `queue`, or everything; how many entries went.

        The next run of that engine starts its search from `worker.batch_size` again.
        """
        return self._sizing_history.forget(engine, queue)


def connect(
    uri: str | None = None,
    database: str | None = None,
    *,
    config: Any = None,
    announce: Any = None,
) -> ContextStore:
    """A ContextStore: the given URI, else CTXBATCH_MONGO_URI, else `mongo.uri`, else embedded."""
    uri = uri or os.environ.get("CTXBATCH_MONGO_URI") or (config.mongo.uri if config else None)
    database = database or (config.mongo.database if config else "ctxbatch")
    levels = config.worker.priorities.ranges() if config else None
    hours = config.api.idempotency_hours if config else IDEMPOTENCY_HOURS
    on_default = uri is None
    if uri is None:
        uri = embedded.ensure_running(announce)
    store = ContextStore(uri, database, levels=levels, idempotency_hours=hours)
    store.embedded = on_default
    return store
