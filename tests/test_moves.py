"""A batch acknowledged and still moving into the queue reads whole, and a cancel meets all of it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ctxbatch.io import ContextStore, moves, staging

TOTAL = staging.CHUNK_CONTEXTS + 10


def records(n: int) -> list[dict[str, Any]]:
    return [{"payload": {"i": i}} for i in range(n)]


@pytest.fixture
def held_move(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Moves stop before their second chunk until the event is set (set again at the end)."""
    real_move = moves._move
    go_on = threading.Event()
    chunks = [0]

    def holding(connection: Any, batch_id: str, documents: list[dict[str, Any]]) -> None:
        chunks[0] += 1
        if chunks[0] == 2:
            assert go_on.wait(60)
        real_move(connection, batch_id, documents)

    monkeypatch.setattr(moves, "_move", holding)
    yield go_on
    go_on.set()


def test_a_batch_reads_whole_while_it_moves_in(
    store: ContextStore, mongo_uri: str, database: str, held_move: threading.Event
) -> None:
    # Given a submission acknowledged whose move holds after its first chunk
    batch_id = store.submit(records(TOTAL), name="moving")
    elsewhere = ContextStore(mongo_uri, database)
    try:
        # Then its status, here and in another process's store, shows all of it pending
        for reader in (store, elsewhere):
            status = reader.batch_status(batch_id)
            assert (status["name"], status["status"]) == ("moving", "pending")
            assert status["counts"]["pending"] == status["counts"]["total"] == TOTAL
        assert not elsewhere.drained()
        # And once the move is done, all of it is in the queue, once
        held_move.set()
        store.wait_moved(batch_id)
        assert elsewhere.contexts.count_documents({"batch_id": {"$eq": batch_id}}) == TOTAL
        assert elsewhere.batch_status(batch_id)["counts"]["pending"] == TOTAL
    finally:
        elsewhere.close()


def test_a_cancel_during_the_move_cancels_every_context(
    store: ContextStore, mongo_uri: str, database: str, held_move: threading.Event
) -> None:
    # Given a batch whose move (in this store's thread) holds after its first chunk
    batch_id = store.submit(records(TOTAL))
    # When another process cancels it: it takes the move over once the move's lease has passed
    elsewhere = ContextStore(mongo_uri, database)
    try:
        assert elsewhere.cancel(batch_id) == TOTAL
    finally:
        elsewhere.close()
    # Then every context is cancelled, even after the first mover goes on
    held_move.set()
    store.wait_moved()
    counts = store.batch_status(batch_id)["counts"]
    assert (counts["cancelled"], counts["pending"], counts["total"]) == (TOTAL, 0, TOTAL)
    assert store.contexts.count_documents({}) == TOTAL
