"""Fixtures: one real embedded server (nx-27017) for the session, one database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctxbatch.io import ContextStore, embedded


@pytest.fixture(scope="session")
def ctxbatch_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private CTXBATCH_HOME, so tests never touch (or stop) the user's own server."""
    home = tmp_path_factory.mktemp("ctxbatch-home")
    saved = {name: os.environ.get(name) for name in ("CTXBATCH_HOME", "CTXBATCH_MONGO_URI", "CTXBATCH_CONFIG")}
    os.environ["CTXBATCH_HOME"] = str(home)
    os.environ.pop("CTXBATCH_MONGO_URI", None)
    os.environ.pop("CTXBATCH_CONFIG", None)
    yield home
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def mongo_uri(ctxbatch_home: Path) -> Iterator[str]:
    """The embedded server, started once for the run and stopped after it."""
    state = embedded.start()
    assert state.uri is not None
    yield state.uri
    embedded.stop()


@pytest.fixture
def database() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(mongo_uri: str, database: str) -> Iterator[ContextStore]:
    """A store over a database of this test's own, dropped afterwards."""
    opened = ContextStore(mongo_uri, database)
    yield opened
    opened.client.drop_database(database)
    opened.close()
