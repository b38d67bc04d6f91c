"""A headless Chromium driven over the DevTools protocol: load a page, evaluate JavaScript, take a screenshot.

The browser runs in its own process group under a private profile and is killed (the whole group)
when the `with` block ends, whatever happened inside it.

From a clone, `python -m tests.browser URL PAGE.png` saves a dashboard page (/ctxbatch, or Dask's own)
once its plots have data: they arrive over Bokeh's websocket after the page loads, so a plain
`chromium --headless --screenshot` catches them blank (README, "The dashboard page").
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image
from websockets.sync.client import ClientConnection, connect

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",  # Chromium picks a free port and writes it to DevToolsActivePort
    "--window-size=1400,1000",
]
START_SECONDS = 30
# True once a Bokeh page holds data in some plot (its first document has a source with rows).
# A data source holding a number other than 0: a page may start with sources of zeros (ctxbatch's
# queue by level), which are not yet data.
BOKEH_DRAWN = """(() => {
  if (!window.Bokeh || !Bokeh.documents.length) return false;
  const held = m => m.get_length && (m.get_length() || 0) > 0 && m.data;
  const numbers = column => Array.from(column).some(v => typeof v === "number" && v !== 0);
  return [...Bokeh.documents[0].all_models].some(m => held(m) && Object.values(m.data).some(numbers));
})()"""
NEXT_FRAMES = "new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """`with Browser(binary) as browser: browser.open(url); browser.evaluate("1 + 1")`."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self._ids = itertools.count(1)
        self._profile = tempfile.TemporaryDirectory(prefix="ctxbatch-chromium-")
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: ClientConnection | None = None
        self._exits = contextlib.ExitStack()
        self.events: list[dict[str, Any]] = []  # DevTools events of the domains enabled, as they arrived

    def __enter__(self) -> Browser:
        profile = Path(self._profile.name)
        self._process = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the renderers die with it
        )
        try:
            self._socket = self._exits.enter_context(
                connect(self._page_socket(profile), max_size=None, open_timeout=START_SECONDS)
            )
        except BaseException:
            self._kill()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._exits.close()
        self._kill()

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
        if self._process is not None:
            self._process.wait(timeout=10)
        self._profile.cleanup()

    def _page_socket(self, profile: Path) -> str:
        """The DevTools websocket of the browser's first tab, once the browser says where it listens."""
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.binary} exited with {self._process.returncode} before it listened")
            if port_file.exists() and port_file.read_text().strip():
                port = port_file.read_text().split()[0]
                import httpx

                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                pages = [t for t in targets if t["type"] == "page"]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
            time.sleep(0.1)
        raise TimeoutError(f"{self.binary} did not open its DevTools port within {START_SECONDS} s")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; the events that arrive in between are kept in `events`."""
        assert self._socket is not None
        ident = next(self._ids)
        self._socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv(timeout=START_SECONDS))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message["result"])
            if "method" in message:
                self.events.append(message)

    def open(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (None for undefined)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        """A PNG of the whole page."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)["data"]
        return base64.b64decode(data)


# The ctxbatch page's line colours (ctxbatch/monitoring/page.py), to tell painted plots from data in memory.
COLOURS = {
    "blue": (31, 119, 180),
    "orange": (255, 127, 14),
    "green": (44, 160, 44),
    "red": (214, 39, 40),
    "purple": (148, 103, 189),  # tokens per second, on the throughput plot
}


def painted(png: bytes) -> dict[str, int]:
    """How many pixels of each plot colour the screenshot holds."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    counts = dict.fromkeys(COLOURS, 0)
    for count, pixel in image.getcolors(maxcolors=1 << 24) or []:
        for name, colour in COLOURS.items():
            if sum(abs(p - c) for p, c in zip(pixel, colour, strict=True)) < 30:
                counts[name] += count
    return counts


def capture(url: str, path: str | Path, timeout: float = 60) -> None:
    """A PNG of a Bokeh page at `url` once its plots have data, drawn (two frames later)."""
    binary = find_chromium()
    if binary is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    with Browser(binary) as browser:
        browser.open(url)
        deadline = time.monotonic() + timeout
        while not browser.evaluate(BOKEH_DRAWN):
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} drew no data within {timeout:g} s")
            time.sleep(0.2)
        browser.call("Runtime.evaluate", expression=NEXT_FRAMES, awaitPromise=True)
        Path(path).write_bytes(browser.screenshot())


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m tests.browser URL PAGE.png")
    capture(sys.argv[1], sys.argv[2])
