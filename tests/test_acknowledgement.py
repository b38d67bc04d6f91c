"""A submission is processed exactly when it was acknowledged: `ctxbatch submit` SIGKILLed at each moment.

printed a batch id <=> the whole submission is processed; printed nothing <=> none of it ever is.
The kill lands at a named moment of the submit (io/moments.py: the process stops there and says
so), while a loop runs; nothing here waits on a sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import ROOT, Loop, json_lines, small_run, until

from ctxbatch.io import ContextStore, moments, staging
from ctxbatch.io.schema import epoch_ms, utcnow

# The move is cut after its first chunk only when there is a second one.
MOVE_CUT = staging.CHUNK_CONTEXTS + 1
SMALL = 20


def _line_with(stream: IO[str], text: str) -> str:
    """The first line of the stream holding `text` (lines before it skipped); '' at its end."""
    for line in stream:
        if text in line:
            return line
    return ""


class Submitter:
    """`ctxbatch submit FILE` in a process of its own, stopped at `moment` (CTXBATCH_TEST_PAUSE_AT)."""

    def __init__(self, mongo_uri: str, database: str, path: str, moment: str) -> None:
        command = [sys.executable, "-m", "ctxbatch", "--mongo-uri", mongo_uri, "--database", database]
        env = {**os.environ, moments.PAUSE_VARIABLE: moment}
        self.moment = moment
        self.process = subprocess.Popen(
            [*command, "submit", path], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def kill_when_paused(self, acknowledged: bool) -> str:
        """SIGKILL it once it stopped at its moment (and printed its batch id, when `acknowledged`);
        what it printed on stdout."""
        assert self.process.stdout is not None and self.process.stderr is not None
        try:
            printed = self.process.stdout.readline() if acknowledged else ""
            assert f"paused at {self.moment}" in _line_with(self.process.stderr, "paused at")
            self.process.send_signal(signal.SIGKILL)
        finally:
            rest, _ = self.process.communicate(timeout=30)
        return (printed + rest).strip()


def tagged(tag: str, n: int) -> list[dict[str, Any]]:
    return [{"payload": {"tag": tag, "i": i}} for i in range(n)]


def contexts_tagged(store: ContextStore, tag: str) -> list[dict[str, Any]]:
    return list(store.contexts.find({"payload.tag": {"$eq": tag}}, {"status": 1, "batch_id": 1}))


@pytest.mark.timeout(240)
def test_a_killed_submit_is_processed_exactly_when_it_printed_its_batch_id(
    mongo_uri: str, database: str, store: ContextStore, tmp_path: Path, loops: Callable[..., Loop]
) -> None:
    # Given a loop running (its upkeep, the janitor, every second)
    loops(small_run(batch_size=500, lease_seconds=4), "tests.engines:echo")
    cases = {
        # moment: (contexts, whether the id is printed before it)
        moments.STAGING: (SMALL, False),
        moments.COMMIT: (SMALL, False),
        moments.ACKNOWLEDGED: (SMALL, True),
        moments.MOVE: (MOVE_CUT, True),
    }
    printed: dict[str, str] = {}
    for moment, (n, acknowledged) in cases.items():
        # When a submit is SIGKILLed at that moment
        path = json_lines(tmp_path / f"{moment}.jsonl", tagged(moment, n))
        printed[moment] = Submitter(mongo_uri, database, path, moment).kill_when_paused(acknowledged)
        # Then it printed a batch id exactly when the moment comes after the commit
        assert bool(printed[moment]) == acknowledged, (moment, printed[moment])
    # And, once a submission made after them all is done, every acknowledged one is done too, whole
    path = json_lines(tmp_path / "after.jsonl", tagged("after", SMALL))
    after = subprocess.run(
        [sys.executable, "-m", "ctxbatch", "--mongo-uri", mongo_uri, "--database", database, "submit", path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    acknowledged = {moment: batch_id for moment, batch_id in printed.items() if batch_id}
    for batch_id in [after, *acknowledged.values()]:
        until(lambda b=batch_id: store.batch_status(b)["status"] == "completed", f"batch {batch_id} completed")
    for moment, batch_id in acknowledged.items():
        found = contexts_tagged(store, moment)
        assert len(found) == cases[moment][0], moment
        assert {(c["batch_id"], c["status"]) for c in found} == {(batch_id, "completed")}
    # And nothing of the unacknowledged ones was ever claimable: not committed, so never moved in
    for moment in (moments.STAGING, moments.COMMIT):
        assert contexts_tagged(store, moment) == [], moment
    assert store.submissions.count_documents({"state": "committed"}) == 0
    # And the janitor drops their staging once their lease has passed
    store.submissions.update_many({}, {"$set": {"lease.expires_ms": epoch_ms(utcnow()) - 1}})
    store.tidy_submissions()
    assert store.staged.count_documents({}) == 0 and store.submissions.count_documents({}) == 0
    assert store.status_counts()["completed"] == 2 * SMALL + MOVE_CUT
