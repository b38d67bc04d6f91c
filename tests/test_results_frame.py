"""A batch's results as a Dask DataFrame, read partition by partition on a real LocalCluster, and
`ctxbatch results ID -o DIR/` writing one Parquet file per partition (issue 21, item 9)."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import Commands, Invoke
from distributed import Client, get_task_stream
from pymongo import MongoClient

from ctxbatch.cli import main
from ctxbatch.errors import BatchNotFound
from ctxbatch.io import ContextStore

CLUSTER = {"n_workers": 2}
CONTEXTS = 3_000
CHUNKSIZE = 256  # 12 partitions, the last one short
JSON_COLUMNS = ["payload", "result", "error"]


def payload(i: int) -> dict[str, object]:
    """Payloads of three shapes, so no one schema would hold them."""
    shapes: list[dict[str, object]] = [{"text": f"doc {i}"}, {"tags": ["a", str(i)], "n": i}, {"nested": {"i": i}}]
    return {"i": i, **shapes[i % 3]}


@pytest.fixture(scope="module")
def worked(mongo_uri: str) -> Iterator[tuple[ContextStore, str]]:
    """A store on a database of this module's own, dropped after, and a batch of CONTEXTS contexts in it:
    the first 2,000 claimed, of which 1,900 completed and 100 failed; the rest pending. The tests only read it.
    """
    opened = ContextStore(mongo_uri, f"t_{uuid.uuid4().hex[:12]}")
    batch_id = opened.submit([{"payload": payload(i)} for i in range(CONTEXTS)])
    claim = opened.claim(2_000, "test")
    opened.complete(claim, {cid: {"double": n * 2} for n, cid in enumerate(claim.ids[:1_900])})
    opened.fail(claim, {cid: {"type": "ValueError", "message": "bad", "traceback": ""} for cid in claim.ids[1_900:]})
    yield opened, batch_id
    opened.client.drop_database(opened.database_name)
    opened.close()


@pytest.fixture
def store(worked: tuple[ContextStore, str]) -> ContextStore:
    return worked[0]


@pytest.fixture
def batch_id(worked: tuple[ContextStore, str]) -> str:
    return worked[1]


@pytest.fixture
def ctxbatch(mongo_uri: str, store: ContextStore) -> Invoke:
    """`ctxbatch --mongo-uri URI --database DB ARGS...` on the module's database, in-process."""
    return lambda *args: CliRunner().invoke(main, ["--mongo-uri", mongo_uri, "--database", store.database_name, *args])


def test_the_partitions_cover_the_batch_exactly_once(store: ContextStore, client: Client, batch_id: str) -> None:
    frame = store.results_frame(batch_id, chunksize=CHUNKSIZE)
    assert frame.npartitions == math.ceil(CONTEXTS / CHUNKSIZE)
    assert frame.divisions == (*range(0, CONTEXTS, CHUNKSIZE), CONTEXTS - 1)
    # Each partition holds the positions of its key range, in order, and nothing else
    for number, part in enumerate(client.compute(frame.to_delayed(), sync=True)):
        start = number * CHUNKSIZE
        assert part.index.tolist() == list(range(start, min(start + CHUNKSIZE, CONTEXTS)))
    whole = frame.compute()
    assert whole["id"].is_unique and set(whole["id"]) == {c["_id"] for c in store.contexts.find({}, {"_id": 1})}
    assert whole["payload"].tolist() == [payload(i) for i in range(CONTEXTS)]


def test_the_partitions_are_read_on_the_cluster_not_through_the_store(
    mongo_uri: str, store: ContextStore, batch_id: str, commands: Commands, client: Client
) -> None:
    # Given a store whose own MongoClient is watched
    with MongoClient(mongo_uri, tz_aware=True, event_listeners=[commands]) as listened:
        frame = ContextStore(mongo_uri, store.database_name, client=listened).results_frame(batch_id, CHUNKSIZE)
        commands.clear()
        # When the frame is computed
        with get_task_stream(client) as stream:
            assert len(frame.compute()) == CONTEXTS
    # Then every partition was a task of the cluster's workers, and the store's own client read no context
    keys = [t["key"][0] if isinstance(t["key"], tuple) else t["key"] for t in stream.data]
    reads = [t for t, key in zip(stream.data, keys, strict=True) if str(key).startswith("ctxbatch-results")]
    assert len(reads) == frame.npartitions
    assert {t["worker"] for t in reads} <= set(client.scheduler_info()["workers"])
    assert commands.on("find") == []


def test_payload_result_and_error_are_python_objects(store: ContextStore, client: Client, batch_id: str) -> None:
    frame = store.results_frame(batch_id, chunksize=CHUNKSIZE)
    assert {str(frame.dtypes[column]) for column in JSON_COLUMNS} == {"object"}
    whole = frame.compute()
    assert {str(whole.dtypes[column]) for column in JSON_COLUMNS} == {"object"}
    done = whole[whole["status"] == "completed"]
    assert len(done) == 1_900 and all(isinstance(r, dict) and "double" in r for r in done["result"])
    assert all(isinstance(e, dict) and e["type"] == "ValueError" for e in whole[whole["status"] == "failed"]["error"])


def test_the_frame_computes_to_store_results(store: ContextStore, client: Client, batch_id: str) -> None:
    whole = store.results_frame(batch_id, chunksize=CHUNKSIZE).compute()
    pd.testing.assert_frame_equal(whole.reset_index(drop=True), store.results(batch_id))


def test_a_range_of_positions_reads_only_its_partition(store: ContextStore, client: Client, batch_id: str) -> None:
    some = store.results_frame(batch_id, chunksize=CHUNKSIZE).loc[300:320]
    assert some.npartitions == 1
    assert some.compute()["payload"].tolist() == [payload(i) for i in range(300, 321)]


def test_an_unknown_batch_is_refused_at_once(store: ContextStore) -> None:
    with pytest.raises(BatchNotFound):
        store.results_frame("nope")


def test_a_partition_holds_at_least_one_context(store: ContextStore, batch_id: str) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        store.results_frame(batch_id, chunksize=0)


# -- ctxbatch results -o DIR/ --------------------------------------------------------------


def test_results_to_a_directory_write_one_parquet_file_per_partition(
    ctxbatch: Invoke, store: ContextStore, batch_id: str, tmp_path: Path
) -> None:
    out = tmp_path / "parts"
    written = ctxbatch("results", batch_id, "-o", f"{out}/", "--format", "parquet", "--chunksize", str(CHUNKSIZE))
    assert written.exit_code == 0, written.stderr
    files = math.ceil(CONTEXTS / CHUNKSIZE)
    assert written.stderr == f"wrote {CONTEXTS} contexts in {files} Parquet files to {out}\n"
    assert sorted(p.name for p in out.iterdir()) == [f"part.{n:02d}.parquet" for n in range(files)]
    # Read back with pandas, the JSON text made objects again in README's one line: the batch's rows, in order
    back = pd.read_parquet(out)
    back[JSON_COLUMNS] = back[JSON_COLUMNS].map(json.loads, na_action="ignore")
    expected = store.results(batch_id)
    pd.testing.assert_frame_equal(back.drop(columns=JSON_COLUMNS), expected.drop(columns=JSON_COLUMNS))
    for column in JSON_COLUMNS:
        assert [v if isinstance(v, dict) else None for v in back[column]] == expected[column].tolist()


def test_a_directory_and_a_file_hold_the_same_rows(ctxbatch: Invoke, batch_id: str, tmp_path: Path) -> None:
    assert ctxbatch("results", batch_id, "-o", str(tmp_path / "one.data"), "--format", "parquet").exit_code == 0
    (tmp_path / "parts").mkdir()  # an existing directory needs no trailing slash
    assert ctxbatch("results", batch_id, "-o", str(tmp_path / "parts"), "--chunksize", "1000").exit_code == 0
    assert len(list((tmp_path / "parts").iterdir())) == 3
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "parts"), pd.read_parquet(tmp_path / "one.data"))


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--format", "parquet"], "Error: --format parquet writes files: add -o FILE.parquet or -o DIR/"),
        (["-o", "{tmp}/", "--format", "openai"], "--format openai writes a file, not a directory"),
        (["-o", "{tmp}/full/"], "full is not empty; give a new or empty directory"),
    ],
    ids=["parquet-to-stdout", "openai-to-a-directory", "a-directory-not-empty"],
)
def test_what_a_directory_cannot_take_is_refused_in_one_line(
    ctxbatch: Invoke, batch_id: str, tmp_path: Path, args: list[str], said: str
) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "part.0.parquet").write_text("an earlier export")
    refused = ctxbatch("results", batch_id, *[a.format(tmp=tmp_path) for a in args])
    assert refused.exit_code == 2
    assert said in refused.stderr.strip().splitlines()[-1]
    assert "Traceback" not in refused.output
    assert (tmp_path / "full" / "part.0.parquet").read_text() == "an earlier export"


def test_an_unknown_batch_makes_no_directory(ctxbatch: Invoke, store: ContextStore, tmp_path: Path) -> None:
    refused = ctxbatch("results", "nope", "-o", f"{tmp_path / 'parts'}/")
    assert refused.exit_code == 1 and refused.stderr == "Error: no batch with id 'nope'\n"
    assert not (tmp_path / "parts").exists()
