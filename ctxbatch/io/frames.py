"""A batch's results as a Dask DataFrame whose partitions are ranges of its contexts' positions.

A context's position in its batch (`sort_id`, given at submit: 0 to total - 1) is the frame's index.
Partition k holds positions [k x chunksize, (k + 1) x chunksize), read by one range of the `results`
index (batch_id, sort_id): the partitions cover the batch exactly once, and Dask knows where each
begins (its divisions), so `.loc[a:b]` reads only the partitions it needs.

Each partition is read by whoever runs it (a worker of the cluster, with a distributed Client) over
a MongoClient of that process, one per server, kept for the process's life as a worker keeps its
store: the rows never pass through the process that built the frame. Dask is imported only here, and
only when a frame is asked for (pandas too), so the commands that never need one do not pay for
the import.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from pymongo import MongoClient

from ctxbatch.io.columns import context_view, results_dataframe
from ctxbatch.io.views import between_positions

if TYPE_CHECKING:
    import dask.dataframe as dd
    import pandas as pd

# Rows per partition unless told: the pandas size of 50,000 contexts of a few kB is Dask's ~100 MB.
CHUNKSIZE = 50_000
INDEX = "sort_id"

_clients: dict[str, MongoClient[dict[str, Any]]] = {}
_clients_lock = threading.Lock()


def results_frame(uri: str, database: str, batch_id: str, positions: int, chunksize: int) -> dd.DataFrame:
    """The batch's contexts at positions [0, positions) as a Dask DataFrame of `chunksize` rows a partition."""
    import dask
    import dask.dataframe as dd

    if chunksize < 1:
        raise ValueError(f"chunksize must be at least 1, got {chunksize}")
    starts = range(0, max(positions, 1), chunksize)
    ranges = [(start, min(start + chunksize, positions)) for start in starts]
    divisions = (*starts, max(positions - 1, 0))
    # Dask would turn object columns into Arrow text (`dataframe.convert-string`): payload, result and
    # error are Python objects (dicts, mostly), so the frame is made without that conversion.
    with dask.config.set({"dataframe.convert-string": False}):
        return dd.from_map(
            read_positions,
            ranges,
            meta=results_dataframe([], _index([])),
            divisions=divisions,
            label="ctxbatch-results",
            uri=uri,
            database=database,
            batch_id=batch_id,
        )


def read_positions(positions: tuple[int, int], *, uri: str, database: str, batch_id: str) -> pd.DataFrame:
    """One partition: the batch's contexts at positions [start, stop), read where the task runs."""
    start, stop = positions
    docs = list(between_positions(_client(uri)[database]["contexts"], batch_id, start, stop))
    return results_dataframe([context_view(doc) for doc in docs], _index([doc["sort_id"] for doc in docs]))


def _index(positions: list[int]) -> pd.Index:
    import pandas as pd

    return pd.Index(positions, dtype="int64", name=INDEX)


def _client(uri: str) -> MongoClient[dict[str, Any]]:
    """This process's client of the server, made on first use."""
    with _clients_lock:
        found = _clients.get(uri)
        if found is None:
            found = _clients[uri] = MongoClient(uri, tz_aware=True, connect=False)
        return found
