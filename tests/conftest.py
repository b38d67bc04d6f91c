"""Fixtures: one real embedded server (nx-27017) for the session, one database per test.

Each fixture and helper more than one test module uses is here, once: the Dask `client`, the HTTP
API on a real socket (`api`, `serving`, `http_client`), `ctxbatch run` processes (`loops`), a webhook
`receiver`, a private CTXBATCH_HOME with its own server (`home`), headless Chromium (`chromium`), and
`until`, the one wait for a condition.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
import yaml
from browser import find_chromium
from click.testing import CliRunner, Result
from distributed import Client, LocalCluster
from pymongo import MongoClient, monitoring
from receiver import WebhookReceiver

from ctxbatch.cli import main
from ctxbatch.config import Settings
from ctxbatch.io import ContextStore, embedded
from ctxbatch.io.schema import epoch_ms
from ctxbatch.service import create_app
from ctxbatch.service.security import TOKEN_VARIABLE

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_SECONDS = 60
T = TypeVar("T")


def until(condition: Callable[[], T], what: str, timeout: float = DEADLINE_SECONDS, every: float = 0.05) -> T:
    """condition()'s first truthy value, polled every `every` s; AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)


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
    opened.wait_moved()  # its own submissions' moves, so none writes into the dropped database
    opened.client.drop_database(database)
    opened.close()


def finished_at(store: ContextStore, ids: list[str], started: dt.datetime, finished: list[dt.datetime]) -> None:
    """Give these settled contexts these times: the claim's start, and each its own finish."""
    for cid, end in zip(ids, finished, strict=True):
        doc = store.contexts.find_one({"_id": cid})
        assert doc is not None
        # A whole-document replace stores a date as a date on nx-27017 (see io/queue.py's note).
        store.contexts.replace_one(
            {"_id": cid}, {**doc, "started_at": started, "finished_at": end, "finished_ms": epoch_ms(end)}
        )


def settled_burst(store: ContextStore, count: int) -> list[str]:
    """`count` contexts claimed and settled at once, the first failed for good, the rest completed; their ids."""
    store.submit([{"payload": {"i": i}} for i in range(count)])
    claim = store.claim(count, "loop")
    store.settle(
        claim,
        results=dict.fromkeys(claim.ids[1:], 1),
        errors={claim.ids[0]: {"type": "ValueError", "message": "bad", "traceback": ""}},
        retry_at=None,
    )
    return claim.ids


class Commands(monitoring.CommandListener):
    """The commands a client sent, as pymongo put them on the wire."""

    def __init__(self) -> None:
        self.events: list[monitoring.CommandStartedEvent] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.events.append(event)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    @property
    def names(self) -> list[str]:
        return [e.command_name for e in self.events]

    def on(self, name: str, collection: str = "contexts") -> list[dict[str, Any]]:
        """The `name` commands (insert, find, update, ...) sent to `collection`."""
        return [e.command for e in self.events if e.command_name == name and e.command.get(name) == collection]

    def clear(self) -> None:
        self.events.clear()


@pytest.fixture
def commands() -> Commands:
    return Commands()


@pytest.fixture
def watched(mongo_uri: str, database: str, commands: Commands) -> Iterator[ContextStore]:
    """A store on the test's database whose client reports every command to `commands`."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True, event_listeners=[commands])
    opened = ContextStore(mongo_uri, database, client=client)
    yield opened
    opened.wait_moved()
    client.drop_database(database)
    client.close()


# A small, quick run: batches of 10, two in flight, no waiting to fill, no retries, no dashboard.
SMALL_RUN: dict[str, Any] = {
    "worker": {
        "batch_size": 10,
        "dynamic_batch_sizing": False,
        "max_parallel_batches": 2,
        "batch_timeout_seconds": 0,
        "lease_seconds": 30,
        "retry": {"batch_retries": 2, "backoff_seconds": [0], "context_retries": 0},
    },
    "dask": {"dashboard_address": None},
}


# A run whose dynamic sizer searches from 10 to 200, one batch at a time, no waiting to fill, no retries.
DYNAMIC_RUN: dict[str, Any] = {
    "worker": {
        "dynamic_batch_sizing": True,
        "batch_size": 10,
        "min_batch_size": 10,
        "max_batch_size": 200,
        "max_parallel_batches": 1,
        "batch_timeout_seconds": 0,
        "lease_seconds": 30,
        "retry": {"context_retries": 0},
    },
    "dask": {"dashboard_address": None},
}


def small_run(**worker: Any) -> dict[str, Any]:
    """SMALL_RUN's settings with these `worker` keys changed (`retry` is merged key by key)."""
    settings = copy.deepcopy(SMALL_RUN)
    retry = worker.pop("retry", {})
    settings["worker"].update(worker)
    settings["worker"]["retry"].update(retry)
    return settings


@contextmanager
def local_cluster(n_workers: int = 1, threads_per_worker: int = 1, processes: bool = False) -> Iterator[Client]:
    """A real LocalCluster (in this process unless `processes`) and a client on it, closed on exit."""
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=processes,
            dashboard_address=None,
            # Without a dashboard the scheduler still serves HTTP, on 8787 unless told a free port.
            scheduler_kwargs={"dashboard_address": ":0"},
        ) as cluster,
        Client(cluster) as connected,
    ):
        yield connected


@pytest.fixture(scope="module")
def client(request: pytest.FixtureRequest) -> Iterator[Client]:
    """One cluster per test module, shaped by the module's `CLUSTER` (local_cluster's arguments)."""
    with local_cluster(**getattr(request.module, "CLUSTER", {})) as connected:
        yield connected


Invoke = Callable[..., Result]


@pytest.fixture
def ctxbatch(mongo_uri: str, database: str) -> Invoke:
    """Runs `ctxbatch --mongo-uri URI --database DB ARGS...` in-process; stdout and stderr apart."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(main, ["--mongo-uri", mongo_uri, "--database", database, *args], input=input)

    return invoke


def json_lines(path: Path, records: list[Any]) -> str:
    """`records` written to `path` as JSON Lines; the path as text."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` under uvicorn in a thread, on a socket of 127.0.0.1: its URL; stopped on exit."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    try:
        until(lambda: server.started or not thread.is_alive(), "uvicorn to start")
        assert thread.is_alive(), "uvicorn stopped at start"
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        listening.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serve_process(mongo_uri: str, database: str, config: Path, token: str) -> Iterator[str]:
    """`ctxbatch serve` as a process on `database` with `config` and `token`: its URL once it answers
    /healthz; stopped on exit. Its output goes to serve.log beside `config`, shown if it exits."""
    port = free_port()
    log = config.parent / "serve.log"
    command = [sys.executable, "-m", "ctxbatch", "--mongo-uri", mongo_uri, "--database", database]
    command += ["serve", "--port", str(port), "--config", str(config)]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env={**os.environ, TOKEN_VARIABLE: token}, stdout=output, stderr=output)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, f"ctxbatch serve exited with {process.returncode}:\n{log.read_text()}"
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        until(healthy, "ctxbatch serve to answer", every=0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def http_client(app: Any) -> Iterator[httpx.Client]:
    """An HTTP client of `app`, served on a real socket for as long as the client is open."""
    with serving(app) as url, httpx.Client(base_url=url, timeout=60) as opened:
        yield opened


@pytest.fixture
def api(store: ContextStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    """The HTTP API over this test's store, served on a real socket, with no token asked for."""
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    with http_client(create_app(store, Settings())) as opened:
        yield opened


Loop = subprocess.Popen[str]


@pytest.fixture
def loops(mongo_uri: str, database: str, tmp_path: Path) -> Iterator[Callable[..., Loop]]:
    """Starts `ctxbatch run` processes on this test's database, each in its own process group.

    `loops(config, engine, *args)`: `config` is a settings dict (written to a YAML file here) or the
    path of one; `args` follow `run --config ... --engine ENGINE`. Whatever is still running at the end
    is killed, process group and all.
    """
    started: list[Loop] = []

    def start(config: dict[str, Any] | Path, engine: str, *args: str) -> Loop:
        if isinstance(config, dict):
            path = tmp_path / f"loop-config-{len(started)}.yaml"
            path.write_text(yaml.safe_dump(config))
            config = path
        command = [sys.executable, "-m", "ctxbatch", "--mongo-uri", mongo_uri, "--database", database]
        command += ["run", "--config", str(config), "--engine", engine, *args]
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium's binary (Debian's `chromium`, which `.ci/run` installs); without it a test skips,
    and fails under CI=true, where it must run."""
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("no chromium on PATH (apt-get install chromium); CI runs this test")
    return binary


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A webhook receiver on 127.0.0.1 for this test, shut down after it."""
    with WebhookReceiver().running() as running:
        yield running


def servers_for(home: Path) -> list[int]:
    """Pids of the live nx-27017 processes serving this home's data."""
    data_dir = str(home / "db")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "status").read_text()
        except OSError:
            continue
        serving = b"--data-dir" in command and data_dir.encode() in command
        if serving and "\nState:\tZ" not in state:
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """CTXBATCH_HOME for this test alone; whatever server runs there is stopped afterwards."""
    path = tmp_path / "home"
    monkeypatch.setenv("CTXBATCH_HOME", str(path))
    monkeypatch.delenv("CTXBATCH_MONGO_URI", raising=False)
    try:
        yield path
    finally:
        embedded.stop()
        assert servers_for(path) == []
