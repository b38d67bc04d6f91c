"""The embedded server (nx-27017) and `ctxbatch db`: each test in a CTXBATCH_HOME of its own.

Every server a test starts is stopped by conftest's `home` fixture, and the fixture checks that no
server process for that home is left.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import servers_for
from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from ctxbatch.cli import main
from ctxbatch.io import ContextStore, embedded

CTXBATCH = Path(sys.executable).with_name("ctxbatch")


def ctxbatch(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def record(home: Path) -> dict[str, object]:
    result: dict[str, object] = json.loads((home / "server.json").read_text())
    return result


def test_db_start_starts_a_server_and_records_it(home: Path) -> None:
    result = ctxbatch("db", "start")
    assert result.exit_code == 0
    saved = record(home)
    assert set(saved) == {"pid", "port", "uri"}
    assert servers_for(home) == [saved["pid"]]
    assert ContextStore(str(saved["uri"]), "probe").ping() > 0
    assert f"at {saved['uri']}" in result.stderr and "ctxbatch db stop" in result.stderr


def test_db_status_json_says_where_it_runs(home: Path) -> None:
    ctxbatch("db", "start")
    result = ctxbatch("db", "status", "--json")
    assert result.exit_code == 0
    saved = record(home)
    assert json.loads(result.stdout) == {
        "running": True,
        "uri": saved["uri"],
        "pid": saved["pid"],
        "data_dir": str(home / "db"),
    }


def test_db_status_json_says_when_nothing_runs(home: Path) -> None:
    result = ctxbatch("db", "status", "--json")
    assert json.loads(result.stdout) == {"running": False, "uri": None, "pid": None, "data_dir": str(home / "db")}


def test_db_status_exits_3_when_nothing_runs(home: Path) -> None:
    result = ctxbatch("db", "status")
    assert result.exit_code == 3
    assert result.stdout.startswith("not running")


def test_a_second_start_reuses_the_running_server(home: Path) -> None:
    ctxbatch("db", "start")
    first = record(home)
    result = ctxbatch("db", "start")
    assert result.exit_code == 0
    assert "already running" in result.stderr
    assert record(home) == first
    assert servers_for(home) == [first["pid"]]


def test_a_stale_record_is_replaced(home: Path) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    home.mkdir()
    (home / "server.json").write_text(json.dumps({"pid": finished.pid, "port": 1, "uri": "mongodb://127.0.0.1:1/"}))
    assert embedded.status().running is False
    assert ctxbatch("db", "start").exit_code == 0
    saved = record(home)
    assert saved["pid"] != finished.pid
    assert servers_for(home) == [saved["pid"]]


def test_a_server_killed_a_moment_ago_does_not_stop_the_next_start(home: Path) -> None:
    # A killed server is a zombie until reaped: it still answers kill(0), so nx-27017 took the pid
    # file naming it for a live server and refused to start ("already running", exit 1).
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    try:
        home.mkdir()
        (home / "nx-27017.pid").write_text(str(zombie.pid))
        (home / "server.json").write_text(json.dumps({"pid": zombie.pid, "port": 1, "uri": "mongodb://127.0.0.1:1/"}))
        assert embedded.start().running
        assert servers_for(home) == [record(home)["pid"]]
    finally:
        zombie.wait()


def test_db_stop_stops_the_server_and_keeps_only_its_port(home: Path) -> None:
    ctxbatch("db", "start")
    port = record(home)["port"]
    result = ctxbatch("db", "stop")
    assert result.exit_code == 0
    assert "stopped" in result.stderr
    assert servers_for(home) == []
    assert record(home) == {"port": port}  # where the next start goes back to
    assert not embedded.status().running


def test_db_stop_when_nothing_runs_says_so(home: Path) -> None:
    result = ctxbatch("db", "stop")
    assert result.exit_code == 0
    assert "not running" in result.stderr


def test_data_survives_a_stop_and_a_start(home: Path) -> None:
    uri = embedded.start().uri
    assert uri is not None
    before = ContextStore(uri, "kept")
    batch_id = before.submit([{"payload": {"n": 1}}, {"payload": {"n": 2}}])
    before.close()
    embedded.stop()
    uri = embedded.start().uri
    assert uri is not None
    after = ContextStore(uri, "kept")
    assert after.batch_status(batch_id)["counts"]["pending"] == 2
    after.close()


def test_a_command_that_needs_the_database_starts_it_and_says_so(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"payload": {"n": 1}}\n')
    result = ctxbatch("submit", str(source))
    assert result.exit_code == 0, result.stderr
    assert "started the embedded database" in result.stderr
    assert servers_for(home) == [record(home)["pid"]]
    status = ctxbatch("status", result.stdout.strip())
    assert status.exit_code == 0
    assert status.stderr == ""  # already running: nothing to announce


def test_with_a_mongo_uri_nothing_is_started(home: Path, mongo_uri: str, store: ContextStore, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"payload": {"n": 1}}\n')
    result = ctxbatch("--mongo-uri", mongo_uri, "--database", store.database_name, "submit", str(source))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert not (home / "server.json").exists()
    assert servers_for(home) == []


def test_two_starts_at_once_make_one_server(home: Path) -> None:
    environment = {**os.environ, "CTXBATCH_HOME": str(home)}
    starts = [
        subprocess.Popen([str(CTXBATCH), "db", "start"], env=environment, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        announcements = [start.communicate(timeout=60)[1] for start in starts]
    finally:
        for start in starts:
            if start.poll() is None:
                start.kill()
                start.wait()
    assert [start.returncode for start in starts] == [0, 0]
    assert sum("started the embedded database" in text for text in announcements) == 1
    assert servers_for(home) == [record(home)["pid"]]


def io_bytes(pid: int, field: str) -> int:
    """What a process has written (`wchar`: each page SQLite commits) or read (`rchar`: each page it
    had no room for in its cache, read again from the OS) so far, from /proc/<pid>/io."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields[field])


def written_bytes(pid: int) -> int:
    return io_bytes(pid, "wchar")


@pytest.fixture
def indexed(home: Path) -> Iterator[tuple[int, Collection[dict[str, Any]]]]:
    """The embedded server's pid, and a `contexts` collection of its own under the store's indexes."""
    state = embedded.start()
    assert state.uri is not None and state.pid is not None
    store = ContextStore(state.uri, "indexed")
    store.connection.ensure_indexes()
    yield state.pid, store.connection.contexts
    store.close()


def test_an_insert_command_is_committed_once_and_a_duplicate_in_it_fails_alone(
    indexed: tuple[int, Collection[dict[str, Any]]],
) -> None:
    # Given the embedded server and a collection with the store's indexes
    pid, contexts = indexed
    contexts.insert_one({"_id": "taken"})
    documents = [{"_id": f"c{i}", "queue": "default", "status": "pending", "payload": {"n": i}} for i in range(2_000)]
    documents.insert(1_000, {"_id": "taken"})
    # When one insert command carries 2,000 documents and a duplicate among them
    before = written_bytes(pid)
    with pytest.raises(BulkWriteError) as refused:
        contexts.insert_many(documents, ordered=False)
    written = written_bytes(pid) - before
    # Then the duplicate fails alone, and the server wrote each page once for the command: committing
    # each document on its own wrote every page it touched again, about 50 KB a document here.
    errors = refused.value.details["writeErrors"]
    assert [(e["index"], e["code"]) for e in errors] == [(1_000, 11000)]
    assert contexts.count_documents({}) == 2_001
    assert written / 2_000 < 10_000


def test_an_update_command_is_committed_once_whether_one_update_or_many(
    indexed: tuple[int, Collection[dict[str, Any]]],
) -> None:
    # Given the embedded server and 2,000 contexts under the store's indexes
    pid, contexts = indexed
    ids = [f"c{i}" for i in range(2_000)]
    contexts.insert_many([{"_id": i, "queue": "default", "status": "pending", "payload": {"i": i}} for i in ids])
    # When one update command claims them all, and one bulk write of an update each settles them
    before = written_bytes(pid)
    claimed = contexts.update_many({"_id": {"$in": ids}}, {"$set": {"status": "processing"}}).modified_count
    claiming = written_bytes(pid) - before
    before = written_bytes(pid)
    settles = [UpdateOne({"_id": i, "status": "processing"}, {"$set": {"status": "completed"}}) for i in ids]
    settled = contexts.bulk_write(settles, ordered=False).modified_count
    settling = written_bytes(pid) - before
    # Then every document changed, and each command wrote each page once (about 50 KB a document, when
    # each was committed on its own)
    assert (claimed, settled) == (2_000, 2_000)
    assert contexts.count_documents({"status": "completed"}) == 2_000
    assert claiming / 2_000 < 10_000 and settling / 2_000 < 10_000, (claiming, settling)


def test_a_database_that_outgrows_sqlites_default_cache_is_updated_from_memory(
    indexed: tuple[int, Collection[dict[str, Any]]],
) -> None:
    # Given the embedded server and 6,000 contexts of ~1 KB under the store's indexes (~14 MB, where
    # SQLite's default page cache holds 2 MB), read once
    pid, contexts = indexed
    ids = [f"c{i}" for i in range(6_000)]
    text = "lorem ipsum dolor sit amet " * 36
    contexts.insert_many([{"_id": i, "queue": "default", "status": "pending", "payload": {"text": text}} for i in ids])
    assert len(list(contexts.find({}, {"_id": 1}))) == 6_000
    # When one bulk write updates every one of them, in an order of their own (as a claim's priorities do)
    random.Random(7).shuffle(ids)
    before = io_bytes(pid, "rchar")
    updates = [UpdateOne({"_id": i}, {"$set": {"status": "completed"}}) for i in ids]
    assert contexts.bulk_write(updates, ordered=False).modified_count == 6_000
    read = io_bytes(pid, "rchar") - before
    # Then the server read little back from the OS (~1.5 KB a context here): with SQLite's default
    # cache it read each row's and index entry's pages again, about 8 KB a context.
    assert read / 6_000 < 4_000, read
