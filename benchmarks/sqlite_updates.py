"""SQLite's own CPU for a context's updates in the embedded server's database: by index set and page cache.

The database is the embedded server's: --contexts of issue 22's shape submitted through a store, the
server stopped, its file copied for each case. A case updates every context three times, as a run
does, with the SQL nx-27017 sends for the store's writes (json_set and json_remove of the fields
written, by rowid), in a shuffled order (a claim takes contexts by priority, spread over the table),
1,000 to a transaction (the server commits a command once):

  claim    status, the lease, attempts, started_at;
  renewal  the lease alone: no index's key changes;
  settle   status, result, finished_ms, finished_at, error removed.

The cases: every index of CONTEXT_INDEXES, the claim index (`queue_order`) alone, none; each with
SQLite's default page cache (2 MiB) and with the one the embedded server sets (PAGE_CACHE_KIB).
Printed: SQLite's CPU per update in microseconds, medians of --repeat.

    python benchmarks/sqlite_updates.py [--contexts 20000] [--repeat 3]
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from _common import arguments, server  # benchmarks/ is on sys.path when run as a script
from server_cost import records

from ctxbatch.io import ContextStore, embedded
from ctxbatch.io.embedded_server import PAGE_CACHE_KIB
from ctxbatch.io.schema import CONTEXT_INDEXES

DATABASE = "updates"
# nx-27017 names an index after its collection and fields, whatever name it was given.
INDEX_NAMES = {m.document["name"]: "idx_contexts_" + "_".join(m.document["key"]) for m in CONTEXT_INDEXES}
INDEX_SETS = {"all": list(INDEX_NAMES.values()), "queue_order": [INDEX_NAMES["queue_order"]], "none": []}
LEASE = json.dumps({"owner": "bench", "token": "0" * 32, "expires_at": {"$date": "2026-12-05T07:48:04.297Z"}})
RESULT = json.dumps({"text": "lorem ipsum dolor sit amet " * 16})
NOW = "json_object('$date', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
UPDATES = {
    "claim": (
        "UPDATE contexts SET data = json_set(data, '$.status', 'processing', '$.lease', json(?), "
        f"'$.attempts', json_extract(data, '$.attempts') + 1, '$.started_at', {NOW}) WHERE id = ?",
        (LEASE,),
    ),
    "renewal": ("UPDATE contexts SET data = json_set(data, '$.lease', json(?)) WHERE id = ?", (LEASE,)),
    "settle": (
        "UPDATE contexts SET data = json_set(json_remove(data, '$.error'), '$.status', 'completed', "
        f"'$.result', json(?), '$.finished_ms', 1796456884297, '$.finished_at', {NOW}) WHERE id = ?",
        (RESULT,),
    ),
}
PER_TRANSACTION = 1000


def built(count: int, directory: Path) -> Path:
    """The embedded server's database file holding `count` contexts, the server stopped."""
    with server(None) as (uri, home):
        store = ContextStore(uri, DATABASE)
        store.ensure_indexes()
        store.submit(records(count))
        store.wait_moved()
        store.close()
        embedded.stop()  # its WAL checkpointed into the file
        return Path(shutil.copy(home / "db" / f"{DATABASE}.db", directory / "built.db"))


def one_case(source: Path, indexes: list[str], cache_kib: int | None, seed: int) -> dict[str, float]:
    """SQLite CPU us per update of each kind, on a fresh copy of `source` keeping only `indexes`."""
    path = Path(shutil.copy(source, source.with_name("case.db")))
    db = sqlite3.connect(path, isolation_level=None)
    if cache_kib is not None:
        db.execute(f"PRAGMA cache_size = -{cache_kib}")
    for name in set(INDEX_NAMES.values()) - set(indexes):
        db.execute(f"DROP INDEX {name}")
    ids = [row[0] for row in db.execute("SELECT id FROM contexts")]
    random.Random(seed).shuffle(ids)
    spent = {}
    for kind, (sql, values) in UPDATES.items():
        started = time.process_time()
        for start in range(0, len(ids), PER_TRANSACTION):
            db.execute("BEGIN")
            for rowid in ids[start : start + PER_TRANSACTION]:
                db.execute(sql, (*values, rowid))
            db.execute("COMMIT")
        spent[kind] = (time.process_time() - started) / len(ids) * 1e6
    db.close()
    path.unlink()
    return spent


def main() -> None:
    args = arguments(__doc__, 20_000, 3)
    cases = [(name, cache) for name in INDEX_SETS for cache in (None, PAGE_CACHE_KIB)]
    times: dict[tuple[str, int | None], list[dict[str, float]]] = {case: [] for case in cases}
    with tempfile.TemporaryDirectory() as scratch:
        source = built(args.contexts, Path(scratch))
        for round_ in range(args.repeat):
            for name, cache in cases:  # alternated, round by round
                times[name, cache].append(one_case(source, INDEX_SETS[name], cache, round_))
    print(f"\nSQLite CPU per update, us ({args.contexts:,} contexts, medians of {args.repeat})\n")
    print("| indexes | page cache | claim | renewal | settle | a life (claim + settle) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, cache in cases:
        med = {kind: statistics.median(t[kind] for t in times[name, cache]) for kind in UPDATES}
        label = "2 MiB (SQLite's default)" if cache is None else f"{cache // 1024} MiB (the server's)"
        life = med["claim"] + med["settle"]
        print(f"| {name} | {label} | {med['claim']:.1f} | {med['renewal']:.1f} | {med['settle']:.1f} | {life:.1f} |")


if __name__ == "__main__":
    main()
