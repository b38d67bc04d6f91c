"""A page of a list in `created_at` order that starts after a given document: the keyset pages the
batch list and the file list share (`after` is the last id of the page before, as OpenAI's lists take it).

The query is a range on `created_at`, which walks the collection's index on it in its order (on
nx-27017 too); ties on `created_at` are ordered by id here, so a page boundary never splits them
wrongly, and a deep page costs what the first does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _key(doc: Mapping[str, Any]) -> tuple[dt.datetime, str]:
    return doc["created_at"], doc["_id"]


def page_after(
    collection: Collection[Any],
    anchor: Mapping[str, Any] | None,
    limit: int,
    *,
    ascending: bool = False,
    fields: Mapping[str, Any] | None = None,
    keep: Callable[[Mapping[str, Any]], bool] = lambda doc: True,
) -> tuple[list[Mapping[str, Any]], bool]:
    """Up to `limit` documents that `keep` keeps, past `anchor` (a document with created_at and _id),
    newest first unless `ascending`; and whether more follow."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    since = {"$gte": EPOCH}
    if anchor is not None:
        since = {"$gte" if ascending else "$lte": anchor["created_at"]}
    start = None if anchor is None else _key(anchor)
    rows: list[Mapping[str, Any]] = []
    in_order = collection.find({"created_at": since}, fields).sort("created_at", ASCENDING if ascending else DESCENDING)
    for doc in in_order:
        key = _key(doc)
        # Past `limit`, read on only through the ties of the last one: they may sort before it.
        if len(rows) > limit and key[0] != rows[-1]["created_at"]:
            break
        beyond = start is None or (key > start if ascending else key < start)
        if beyond and keep(doc):
            rows.append(doc)
    rows.sort(key=_key, reverse=not ascending)
    return rows[:limit], len(rows) > limit
