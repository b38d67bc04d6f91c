"""What every benchmark shares: its command-line options and a server of its own."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from ctxbatch.io import embedded


def arguments(
    doc: str | None, contexts: int, repeat: int, argv: list[str] | None = None, **more: int | bool
) -> argparse.Namespace:
    """--contexts, --repeat, --mongo-uri, and an option for each of `more` (memory_lines: --memory-lines):
    an integer, or a flag when its default is a bool."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=contexts)
    parser.add_argument("--repeat", type=int, default=repeat)
    for name, default in more.items():
        option = f"--{name.replace('_', '-')}"
        if isinstance(default, bool):
            parser.add_argument(option, action="store_true", default=default)
        else:
            parser.add_argument(option, type=int, default=default)
    parser.add_argument("--mongo-uri", help="Measure against this server instead of a private embedded one.")
    return parser.parse_args(argv)


@contextmanager
def server(mongo_uri: str | None) -> Iterator[tuple[str, Path]]:
    """(uri, a scratch directory): the given server, or an embedded one in a home of its own, stopped at the end."""
    with tempfile.TemporaryDirectory() as workdir:
        if mongo_uri:
            yield mongo_uri, Path(workdir)
            return
        os.environ["CTXBATCH_HOME"] = workdir
        uri = embedded.ensure_running()
        try:
            yield uri, Path(workdir)
        finally:
            embedded.stop()


def cpu_seconds(pid: int | None) -> float:
    """A process's user + system CPU seconds so far, from /proc (0 when there is none to read)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(script: str, *words: str) -> Iterator[str]:
    """`script --serve PORT *words` in a subprocess on a free port; yields its base URL once it answers."""
    port = free_port()
    process = subprocess.Popen([sys.executable, script, "--serve", str(port), *words])
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(100):
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)
