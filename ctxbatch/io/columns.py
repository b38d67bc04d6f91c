"""A context as users see it: its columns, their dtypes in a DataFrame, and a stored document's view.

Every results DataFrame (store.results(), each partition of store.results_frame(), the chunks an export
writes) is made by `results_dataframe`, so a column's dtype depends neither on how many rows there are
nor on what they hold: text as Dask makes it (Arrow strings, <NA> when missing), times in UTC to the
millisecond as MongoDB stores them, JSON (payload, result, error) as Python objects.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

RESULT_COLUMNS = [
    "id", "batch_id", "queue", "tenant", "key", "custom_id", "status", "priority", "payload", "result", "error",
    "attempts", "next_attempt_at", "created_at", "started_at", "finished_at",
]  # fmt: skip
# A stored context's fields users never see: the lease and the store's own bookkeeping.
INTERNAL_FIELDS = ("_id", "lease", "next_attempt_ms", "finished_ms", "sort_id", "due")
# The columns by kind, for their dtypes in every results DataFrame (see the module's note).
TEXT_COLUMNS = ("id", "batch_id", "queue", "tenant", "key", "custom_id", "status")
INTEGER_COLUMNS = ("priority", "attempts")
JSON_COLUMNS = ("payload", "result", "error")
TIME_COLUMNS = ("next_attempt_at", "created_at", "started_at", "finished_at")


@functools.cache
def result_dtypes() -> dict[str, Any]:
    """The dtype of each column. pandas is imported on first use: what never makes a DataFrame (the
    command line's quick commands, a loop's claims) never loads it."""
    import pandas as pd

    return {
        **dict.fromkeys(TEXT_COLUMNS, pd.StringDtype("pyarrow")),
        **dict.fromkeys(INTEGER_COLUMNS, "int64"),
        **dict.fromkeys(JSON_COLUMNS, object),
        **dict.fromkeys(TIME_COLUMNS, pd.DatetimeTZDtype("ms", "UTC")),
    }


def context_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored context as users see it: `_id` is `id`; the lease and the store's bookkeeping are internal."""
    view = {"id": doc["_id"], **{k: v for k, v in doc.items() if k not in INTERNAL_FIELDS}}
    view["tenant"] = doc.get("tenant") or None  # stored as NO_TENANT when it has none
    for column in RESULT_COLUMNS:
        view.setdefault(column, None)
    return view


def results_dataframe(views: Sequence[Mapping[str, Any]], index: pd.Index | None = None) -> pd.DataFrame:
    """Contexts as users see them (context_view()) as a DataFrame of RESULT_COLUMNS with result_dtypes()."""
    import pandas as pd

    dtypes = result_dtypes()
    return pd.DataFrame(
        {name: pd.Series([v[name] for v in views], dtype=dtypes[name], index=index) for name in RESULT_COLUMNS},
        index=index,
    )
