"""The embedded MongoDB-compatible server (nx-27017 over SQLite), started on demand.

Its record `{pid, port, uri}` lives in `$CTXBATCH_HOME/server.json`; data under
`$CTXBATCH_HOME/db`. A file lock keeps two commands from starting two servers at once.

A server that comes back (after a crash or `db stop`) takes its recorded port again when that
port is free, so the clients still connected to it (a loop, `serve`, Dask workers) find it where
they left it; only when the port is taken does it move, and clients started on the embedded
default re-read the record (`located()`).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from ctxbatch.errors import DatabaseUnavailable

START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
PORT_WAIT_SECONDS = 2.0  # how long a start waits for its recorded port before it moves
SERVER_SCRIPT = Path(__file__).with_name("embedded_server.py")


def home() -> Path:
    return Path(os.environ.get("CTXBATCH_HOME") or Path.home() / ".ctxbatch").expanduser()


@dataclass(frozen=True)
class ServerState:
    running: bool
    uri: str | None
    pid: int | None
    data_dir: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _record_path() -> Path:
    return home() / "server.json"


def _data_dir() -> Path:
    return home() / "db"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); its /proc status says it is gone.
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def _read_record() -> dict[str, object] | None:
    try:
        record = json.loads(_record_path().read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def status() -> ServerState:
    """What the record says, checked against the live process."""
    record = _read_record()
    pid = record.get("pid") if record else None
    if isinstance(pid, int) and _alive(pid):
        return ServerState(True, str(record["uri"]) if record else None, pid, str(_data_dir()))
    return ServerState(False, None, None, str(_data_dir()))


@contextmanager
def _locked() -> Iterator[None]:
    home().mkdir(parents=True, exist_ok=True)
    with open(home() / "server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _forget_dead_pid_file() -> None:
    """Remove nx-27017's pid file when the process it names is gone.

    nx-27017 refuses to start while its pid file names a process that answers kill(0), and a
    killed server is a zombie that does until its parent reaps it: a start right after a crash
    would exit 1 ("already running"). A live server's pid file is left alone.
    """
    pid_file = home() / "nx-27017.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    if not _alive(pid):
        pid_file.unlink(missing_ok=True)


def _free_port(wanted: int = 0, wait_seconds: float = 0.0) -> int:
    """`wanted` if it is free, or becomes free within `wait_seconds`; else any free port (0: any)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        with socket.socket() as sock:
            # As the server binds (asyncio sets SO_REUSEADDR): a killed server's connections in
            # TIME_WAIT do not make its port look taken.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", wanted))
                return int(sock.getsockname()[1])
            except OSError:
                if time.monotonic() >= deadline:
                    sock.bind(("127.0.0.1", 0))
                    return int(sock.getsockname()[1])
        time.sleep(0.05)


def _recorded_port() -> int:
    record = _read_record()
    port = record.get("port") if record else None
    return port if isinstance(port, int) and 0 < port < 65536 else 0


def located() -> str | None:
    """Where the record says the running server is, or None."""
    current = status()
    return current.uri if current.running else None


def _wait_until_answering(uri: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=250)
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DatabaseUnavailable(
                    f"the embedded server exited with code {process.returncode}; see {home() / 'server.log'}"
                )
            try:
                client.admin.command("ping")
                return
            except PyMongoError:
                time.sleep(0.1)
    finally:
        client.close()
    process.kill()
    raise DatabaseUnavailable(f"the embedded server did not answer within {START_TIMEOUT_SECONDS:.0f} s")


def start(announce: Callable[[str], None] | None = None) -> ServerState:
    """Start the server unless one is running; a stale record (dead pid) is replaced."""
    with _locked():
        current = status()
        if current.running:
            return current
        _data_dir().mkdir(parents=True, exist_ok=True)
        _forget_dead_pid_file()
        # A server killed a moment ago may still hold its port while the kernel closes its files.
        port = _free_port(_recorded_port(), PORT_WAIT_SECONDS)
        uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        log = open(home() / "server.log", "ab")  # noqa: SIM115 - handed to the child
        # nx-27017 with one commit per insert command (io/embedded_server.py); -P: its folder is not put
        # on sys.path, where io/queue.py would hide the standard library's queue.
        command = [
            sys.executable, "-P", str(SERVER_SCRIPT),
            "--data-dir", str(_data_dir()), "--host", "127.0.0.1", "--port", str(port),
            "--log-file", str(home() / "server.log"), "--pid-file", str(home() / "nx-27017.pid"),
        ]  # fmt: skip
        # A new session, so Ctrl-C in the terminal that started it does not stop the server.
        process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        _wait_until_answering(uri, process)
        _record_path().write_text(json.dumps({"pid": process.pid, "port": port, "uri": uri}))
        started = ServerState(True, uri, process.pid, str(_data_dir()))
    if announce:
        announce(
            f"ctxbatch: started the embedded database (nx-27017, pid {process.pid}) at {uri}, "
            f"data in {started.data_dir}; stop it with `ctxbatch db stop`"
        )
    return started


def stop() -> bool:
    """Stop the server; True if one was running."""
    with _locked():
        current = status()
        port = _recorded_port()
        _record_path().unlink(missing_ok=True)
        if port:  # the port is kept for the next start
            _record_path().write_text(json.dumps({"port": port}))
        if not current.running or current.pid is None:
            return False
        os.kill(current.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while _alive(current.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(current.pid):
            os.kill(current.pid, signal.SIGKILL)
        return True


def ensure_running(announce: Callable[[str], None] | None = None) -> str:
    """The embedded server's URI, starting it first when needed."""
    current = status()
    uri = current.uri if current.running else start(announce).uri
    assert uri is not None
    return uri
