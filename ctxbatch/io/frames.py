"""A claimed batch <-> a partitioned Dask DataFrame, read and written on the workers.

The loop's process only ever holds ids: each partition loads its own payloads from MongoDB
by id (fenced by the lease token) and writes its own results back in one bulk write.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import dask
import dask.dataframe as dd
import pandas as pd

from ctxbatch.io.claims import Claim
from ctxbatch.io.schema import held_by
from ctxbatch.io.store import ContextStore

LOAD_META = pd.DataFrame(
    {
        "id": pd.Series([], dtype=object),
        "payload": pd.Series([], dtype=object),
        "priority": pd.Series([], dtype="int64"),
        "attempts": pd.Series([], dtype="int64"),
    }
)

_stores: dict[tuple[str, str], ContextStore] = {}
_stores_lock = threading.Lock()


def shared_store(uri: str, database: str) -> ContextStore:
    """One store (one MongoClient and its pool) per process, shared by every partition it runs."""
    with _stores_lock:
        found = _stores.get((uri, database))
        if found is None:
            found = _stores[(uri, database)] = ContextStore(uri, database)
        return found


def split_ids(ids: list[str], partitions: int) -> list[list[str]]:
    """Contiguous, near-equal slices (claim order is priority order, so early slices are urgent)."""
    partitions = max(1, min(partitions, len(ids)))
    size, extra = divmod(len(ids), partitions)
    slices, start = [], 0
    for i in range(partitions):
        end = start + size + (1 if i < extra else 0)
        slices.append(ids[start:end])
        start = end
    return slices


def load_partition(ids: list[str], uri: str, database: str, token: str, whole: bool = False) -> pd.DataFrame:
    """The payloads of these contexts, as long as this lease still holds them.

    A partition that is the `whole` claim is read by its lease alone: a list of ids in the filter
    costs the server about as much again.
    """
    store = shared_store(uri, database)
    fence = held_by(token)
    # Whole documents: nx-27017 projects in Python, which costs it more than sending the rest.
    # batch_size: the whole partition in one reply; its getMore costs as much as a new query.
    docs = store.contexts.find(fence if whole else {"_id": {"$in": ids}, **fence}).batch_size(len(ids))
    by_id = {d["_id"]: d for d in docs}
    held = [by_id[i] for i in ids if i in by_id]  # claim order, not the server's
    return pd.DataFrame(
        {
            "id": pd.Series([d["_id"] for d in held], dtype=object),
            "payload": pd.Series([d.get("payload") for d in held], dtype=object),
            "priority": pd.Series([d["priority"] for d in held], dtype="int64"),
            "attempts": pd.Series([d["attempts"] for d in held], dtype="int64"),
        }
    )


def claim_frame(
    store: ContextStore,
    claim: Claim,
    partitions: int,
    label: str,
    process: Callable[..., pd.DataFrame],
    meta: pd.DataFrame,
    **process_kwargs: Any,
) -> dd.DataFrame:
    """The batch as a Dask DataFrame: `partitions` slices loaded on the workers, `process` mapped over them.

    Task names read `<label>-load` and `<label>-partition` in the dashboard.
    """
    # Payloads are dicts: Dask's default string conversion would turn them into text.
    with dask.config.set({"dataframe.convert-string": False}):
        slices = split_ids(claim.ids, partitions)
        loaded = dd.from_map(
            load_partition,
            slices,
            args=(store.uri, store.database_name, claim.token, len(slices) == 1),
            meta=LOAD_META,
            label=f"{label}-load",
            enforce_metadata=False,
        )
        return loaded.map_partitions(
            process,
            meta=meta,
            token=f"{label}-partition",
            enforce_metadata=False,
            claim=claim.subset([]),
            uri=store.uri,
            database=store.database_name,
            **process_kwargs,
        )
