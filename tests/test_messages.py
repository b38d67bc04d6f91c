"""Short messages: a database outage in one line, Dask's per-task failure blocks at debug level."""

from __future__ import annotations

import logging

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from ctxbatch.io.outage import MAX_REASON, short_reason
from ctxbatch.pipeline.quiet import quiet_compute_failures


def test_an_outage_is_told_in_one_short_line() -> None:
    # Given a real server-selection failure, whose message carries the whole topology description
    client: MongoClient[dict[str, object]] = MongoClient("mongodb://127.0.0.1:9/", serverSelectionTimeoutMS=50)
    with pytest.raises(PyMongoError) as failed:
        client.admin.command("ping")
    client.close()
    assert "Topology Description" in str(failed.value)
    # Then the line a user sees is short and names the error
    reason = short_reason(failed.value)
    assert "\n" not in reason and len(reason) <= MAX_REASON + 40
    assert "Topology" not in reason
    assert reason.startswith("ServerSelectionTimeoutError")


def test_compute_failed_blocks_are_kept_off_the_terminal(caplog: pytest.LogCaptureFixture) -> None:
    quiet_compute_failures()
    quiet_compute_failures()  # idempotent
    worker_log = logging.getLogger("distributed.worker")
    with caplog.at_level(logging.DEBUG):
        worker_log.error("Compute Failed\nKey:       %s\nTraceback: %r\n", "part-1", "Traceback (...)")
        worker_log.error("something else")
    shown = [r for r in caplog.records if r.name == "distributed.worker"]
    assert [r.getMessage() for r in shown] == ["something else"]
    assert any(r.levelno == logging.DEBUG and "part-1" in r.getMessage() for r in caplog.records)
