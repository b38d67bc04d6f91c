"""A small real HTTP service on 127.0.0.1 for the tests of engines that call services.

`POST /` with a JSON payload `{"i": ...}` answers `{"i": ...}`; a `Script` says what else it does:
take a while to answer, answer 429 + Retry-After to the first calls of every payload (or of every
n-th, or to the next call the test asks for), 500 to every n-th payload, hang on one payload (until
the service stops), or report a `usage` of tokens. It counts the calls it holds at once.
"""

from __future__ import annotations

import bisect
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Script:
    busy_first: int = 0  # calls per payload answered 429 before it is served
    retry_after: str = "1"
    hang_on: int | None = None  # the payload whose calls never answer while the service runs
    bad_on: int | None = None  # the payload answered 400 (a bad request) every time
    latency: float = 0.0  # seconds each call takes
    busy_every: int = 0  # with n, the first call of every n-th payload is answered 429 with no Retry-After
    fail_every: int = 0  # with n, every n-th payload is answered 500 every time (a bad row)
    inside: int = 0  # calls it holds now
    most_inside: int = 0  # the most calls it held at once
    usage: int | None = None  # answered as `usage.total_tokens` of every call served
    chat_usage: bool = False  # answer a chat completion's usage: 10 + i prompt tokens, i completion tokens
    turn_away_next: threading.Event = field(default_factory=threading.Event)  # set: the next call gets a 429
    stopping: threading.Event = field(default_factory=threading.Event)
    calls: Counter[int] = field(default_factory=Counter)
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of every call
    callers: list[tuple[float, int]] = field(default_factory=list)  # (arrival, payload's "pid") when it has one
    # The caller's time.monotonic() as its call started (payload's "started", when it has one): a
    # limit bounds when calls start; their arrivals also carry the callers' scheduling under load.
    starts: list[float] = field(default_factory=list)
    turned_away: list[float] = field(default_factory=list)  # arrivals answered 429 on turn_away_next
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, payload: dict[str, object]) -> tuple[int, dict[str, str], bytes]:
        key = int(str(payload.get("i", -1)))
        with self.lock:
            now = time.monotonic()
            self.calls[key] += 1
            self.arrivals.append(now)
            if "pid" in payload:
                self.callers.append((now, int(str(payload["pid"]))))
            if "started" in payload:
                self.starts.append(float(str(payload["started"])))
            seen = self.calls[key]
            if self.turn_away_next.is_set():
                self.turn_away_next.clear()
                self.turned_away.append(now)
                return 429, {"Retry-After": self.retry_after}, b'{"error": "slow down"}'
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            if self.latency:
                time.sleep(self.latency)
            return self._status(key, seen)
        finally:
            with self.lock:
                self.inside -= 1

    def _status(self, key: int, seen: int) -> tuple[int, dict[str, str], bytes]:
        if key == self.hang_on:
            self.stopping.wait()
        if key == self.bad_on:
            return 400, {}, b'{"error": "field i is odd today"}'
        if seen <= self.busy_first:
            return 429, {"Retry-After": self.retry_after}, b'{"error": "slow down"}'
        if self.busy_every and key % self.busy_every == 0 and seen == 1:
            return 429, {}, b'{"error": "busy"}'
        if self.fail_every and key % self.fail_every == 1:
            return 500, {}, b'{"error": "this row breaks the service"}'
        reply: dict[str, object] = {"i": key}
        if self.usage is not None:
            reply["usage"] = {"total_tokens": self.usage}
        if self.chat_usage:
            reply["usage"] = {"prompt_tokens": 10 + key, "completion_tokens": key, "total_tokens": 10 + 2 * key}
        return 200, {}, json.dumps(reply).encode()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 makes a burst of connections wait for SYN retries

    def handle_error(self, request: object, client_address: object) -> None:
        # A caller that gave up (timed out) before its answer: not the service's error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@contextmanager
def serve(script: Script) -> Iterator[str]:
    """Serve `script` on a free port of 127.0.0.1 in a thread; yields its URL; stopped on exit."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, headers, reply = script.answer(json.loads(body or b"{}"))
            self.send_response(status)
            for name, value in {**headers, "Content-Type": "application/json"}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        script.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()


def most_in_window(times: list[float], window: float, weights: list[float] | None = None) -> float:
    """The most calls (or summed weights) at `times` in any span [t, t + window)."""
    order = sorted(range(len(times)), key=times.__getitem__)
    ts = [times[i] for i in order]
    ws = [1.0 if weights is None else weights[i] for i in order]
    sums = [0.0]
    for w in ws:
        sums.append(sums[-1] + w)
    return max(sums[bisect.bisect_left(ts, t + window)] - sums[i] for i, t in enumerate(ts))
