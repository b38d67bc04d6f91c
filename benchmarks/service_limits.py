"""Two loops sharing one `limits.tokens_per_minute` against a service that reports the tokens it used.

Two `ctxbatch run --engine http` processes, each with its own LocalCluster of 2 workers (threads),
share `limits: {tokens_per_minute: 30000}` on one database. The service (a threaded HTTP server in
this process) takes 0.5 s per call and answers `usage.total_tokens: 500`; the payloads ask for
`max_tokens: 1000`, so each call is estimated at ~1,010 tokens (twice what it uses) and the
correction from usage is what lets the loops reach the limit. The service records when each call
arrived and what it charged. After `--seconds` both loops get SIGTERM; reported:

  busiest 60 s   the most tokens the service charged in any 60 s window   target <= 1.05 x limit
  mean 60 s      the mean over the run's full 60 s windows                 target >= 0.85 x limit

    python benchmarks/service_limits.py [--seconds 180] [--mongo-uri URI]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
from _common import server  # benchmarks/ is on sys.path when run as a script

from ctxbatch.io import ContextStore

TOKENS_PER_MINUTE = 30_000
USED = 500  # tokens each call reports
MAX_TOKENS = 1_000  # each payload's max_tokens: the estimate's bulk
CALL_SECONDS = 0.5
WINDOW = 60.0
LOOPS = 2


class Ledger:
    """What the service charged: (arrival, tokens) per call, arrivals by time.monotonic()."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[float, int]] = []

    def charge(self, tokens: int) -> None:
        with self.lock:
            self.calls.append((time.monotonic(), tokens))


@contextmanager
def service(ledger: Ledger) -> Iterator[str]:
    """The service on a free port of 127.0.0.1, in threads of this process; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            ledger.charge(USED)
            time.sleep(CALL_SECONDS)
            reply = json.dumps({"choices": [{"text": "ok"}], "usage": {"total_tokens": USED}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def loop_config(workdir: Path, url: str) -> Path:
    config = {
        "limits": {"tokens_per_minute": TOKENS_PER_MINUTE},
        "http": {"url": url, "timeout_seconds": 30},
        "worker": {
            "batch_size": 10,
            "dynamic_batch_sizing": False,
            "max_parallel_batches": 2,
            "batch_timeout_seconds": 0,
        },
        "dask": {"n_workers": 2, "threads_per_worker": 1, "processes": False, "dashboard_address": None},
    }
    path = workdir / "limits.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def windows(calls: list[tuple[float, int]], start: float, end: float) -> tuple[float, float, int]:
    """(busiest 60 s of tokens, mean of the full 60 s windows from `start`, how many) over [start, end)."""
    inside = sorted((t, n) for t, n in calls if start <= t < end)
    times = [t for t, _ in inside]
    sums = [0]
    for _, n in inside:
        sums.append(sums[-1] + n)
    busiest = max((sums[bisect.bisect_left(times, t + WINDOW)] - sums[i] for i, t in enumerate(times)), default=0)
    full = int((end - start) // WINDOW)
    tumbling = [
        sums[bisect.bisect_left(times, start + (k + 1) * WINDOW)] - sums[bisect.bisect_left(times, start + k * WINDOW)]
        for k in range(full)
    ]
    return float(busiest), (sum(tumbling) / full if full else float("nan")), full


def measure(uri: str, workdir: Path, seconds: float) -> dict[str, float]:
    """Run the two loops for `seconds`; the service's figures."""
    database = "service_limits"
    store = ContextStore(uri, database)
    # More than the run can take: each loop always has work.
    calls_possible = int(seconds * TOKENS_PER_MINUTE / 60 / USED * 2) + 100
    prompt = "Summarise the following text in one line. " * 2
    store.submit([{"payload": {"i": i, "max_tokens": MAX_TOKENS, "prompt": prompt}} for i in range(calls_possible)])
    ledger = Ledger()
    with service(ledger) as url:
        config = loop_config(workdir, url)
        command = [sys.executable, "-m", "ctxbatch", "--mongo-uri", uri, "--database", database]
        command += ["run", "--config", str(config), "--engine", "http"]
        loops = [
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for _ in range(LOOPS)
        ]
        try:
            while not ledger.calls:  # the clock starts at the first call either loop makes
                time.sleep(0.05)
            start = ledger.calls[0][0]
            time.sleep(max(start + seconds - time.monotonic(), 0))
            end = time.monotonic()
        finally:
            for loop in loops:
                loop.send_signal(signal.SIGTERM)
            for loop in loops:
                try:
                    loop.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    loop.kill()
                    loop.communicate()
    busiest, mean, full = windows(ledger.calls, start, end)
    estimate = MAX_TOKENS + len(prompt) / 4
    limits_doc = store.limits.limits.find_one({"_id": "default"}) or {}
    store.client.drop_database(database)
    store.close()
    return {
        "seconds": end - start,
        "calls": sum(1 for t, _ in ledger.calls if start <= t < end),
        "busiest": busiest,
        "mean": mean,
        "full_windows": full,
        "estimate": estimate,
        "tat_left": float(limits_doc.get("tokens", {}).get("tat", 0.0)),
    }


def table(found: dict[str, float], seconds: float) -> str:
    limit = TOKENS_PER_MINUTE
    return "\n".join(
        [
            f"{LOOPS} loops x 2 workers, `tokens_per_minute: {limit}`, {found['seconds']:.0f} s, "
            f"{found['calls']:.0f} calls of {USED} tokens used, each estimated at {found['estimate']:.0f}",
            "",
            "| figure | tokens | x limit | target |",
            "|---|---:|---:|---|",
            f"| busiest 60 s window | {found['busiest']:,.0f} | {found['busiest'] / limit:.3f} | <= 1.05 |",
            f"| mean of {found['full_windows']} full 60 s windows | {found['mean']:,.0f} | "
            f"{found['mean'] / limit:.3f} | >= 0.85 |",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180, help="How long the loops run (default 180).")
    parser.add_argument("--mongo-uri", help="Measure against this server instead of a private embedded one.")
    args = parser.parse_args(argv)
    os.environ.pop("CTXBATCH_CONFIG", None)
    with server(args.mongo_uri) as (uri, workdir):
        print(table(measure(uri, workdir, args.seconds), args.seconds))


if __name__ == "__main__":
    main()
