"""A real HTTP receiver of alert webhooks on 127.0.0.1, started by a test: it records what it is sent."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The longest a POST waits for `hold`: a test that never sets it still ends.
HOLD_SECONDS = 20.0


class WebhookReceiver:
    """Records each POSTed JSON body, then answers `status`, or 500 for the first `fail_first` (not recorded).

    With `hold`, each POST waits until the event is set before it records and answers: a slow receiver,
    as slow as the test wants. A body is recorded before its answer, so a sender that got its answer
    finds its body in `bodies`.
    """

    def __init__(self, status: int = 200, hold: threading.Event | None = None, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.status, self.hold, self.fail_first = status, hold, fail_first
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._changed:
                    receiver.attempts += 1
                    failing = receiver.attempts <= receiver.fail_first
                if receiver.hold is not None:
                    receiver.hold.wait(HOLD_SECONDS)
                if not failing:
                    with receiver._changed:
                        receiver.bodies.append(body)
                        receiver._changed.notify_all()
                self.send_response(500 if failing else receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0) -> list[dict[str, Any]]:
        """The bodies received once `done(bodies)` holds; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(self.bodies):
                left = deadline - time.monotonic()
                assert left > 0, f"the receiver got {self.bodies!r}"
                self._changed.wait(left)
            return list(self.bodies)

    def statuses(self) -> list[tuple[str, str]]:
        """(status, alertname) of each notification received, in order."""
        return [(b["status"], b["alerts"][0]["labels"]["alertname"]) for b in self.bodies]

    @contextmanager
    def running(self) -> Iterator[WebhookReceiver]:
        self._thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


def dead_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (a port that was just free)."""
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]
    return f"http://127.0.0.1:{port}/alerts"
