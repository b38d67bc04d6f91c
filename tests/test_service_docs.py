"""The API's documentation pages, /docs and /redoc, work on a machine without internet.

Everything they load comes from the server (fastapi-offline's copies of Swagger UI and ReDoc), over
a real socket; in headless Chromium they render the API, and no request leaves for another host.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from conftest import serving, until

from ctxbatch.config import Settings
from ctxbatch.io import ContextStore
from ctxbatch.service import create_app
from ctxbatch.service.security import TOKEN_VARIABLE
from tests.browser import Browser

pytestmark = pytest.mark.timeout(120)

PAGES = ["/docs", "/redoc"]
# What an asset's content type must say, by the end of its path.
KINDS = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}
# Run in the page before its own scripts: the images that failed to load, as they fail.
WATCH_IMAGES = """window.failedImages = [];
addEventListener('error', e => { if (e.target.tagName === 'IMG') failedImages.push(e.target.src); }, true);"""
# In the browser: each page has drawn the API once these hold.
RENDERED = {
    # Swagger UI: an operation block per route, /api/batches among them
    "/docs": "[...document.querySelectorAll('.opblock-summary-path')].some(e => e.innerText === '/api/batches')",
    # ReDoc: its side menu lists the routes by summary, and its attribution logo (asked of Redocly's
    # CDN, which the page's Content-Security-Policy refuses) has failed and hidden itself
    "/redoc": "[...document.querySelectorAll('.menu-content li')].some(e => e.innerText.includes('Submit contexts'))"
    " && failedImages.length > 0",
}


class References(HTMLParser):
    """Every address a page names: src, href and ReDoc's spec-url, and Swagger UI's `url: '...'` in its script."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]

    def handle_data(self, data: str) -> None:
        self.found += re.findall(r"\burl: ?'([^']+)'", data)


@pytest.fixture
def served(store: ContextStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    with serving(create_app(store, Settings())) as url:
        yield url


@pytest.mark.parametrize("page", PAGES)
def test_a_docs_page_references_only_the_server_and_each_asset_answers(served: str, page: str) -> None:
    answer = httpx.get(served + page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    # No address of another host anywhere in the page (a CDN's, as FastAPI's own pages have)
    elsewhere = [url for url in re.findall(r"(?:https?:)?//[\w.:-]+", answer.text) if urlsplit(url).netloc]
    assert [url for url in elsewhere if not served.endswith(urlsplit(url).netloc)] == []
    # And every address it names is this server's, answered with what it says it is
    parser = References()
    parser.feed(answer.text)
    assets = {urljoin(served + page, found) for found in parser.found}
    assert len(assets) >= 3, assets  # the bundle (and Swagger UI's stylesheet), the icon, the OpenAPI document
    for url in sorted(assets):
        assert url.startswith(served + "/"), url
        fetched = httpx.get(url)
        kind = next(kind for ending, kind in KINDS.items() if urlsplit(url).path.endswith(ending))
        assert fetched.status_code == 200, url
        assert kind in fetched.headers["content-type"], (url, fetched.headers["content-type"])


@pytest.mark.parametrize("page", PAGES)
def test_a_docs_page_renders_the_api_in_a_browser_without_leaving_the_server(
    chromium: str, served: str, page: str
) -> None:
    with Browser(chromium) as browser:
        browser.call("Network.enable")
        browser.call("Page.addScriptToEvaluateOnNewDocument", source=WATCH_IMAGES)
        browser.open(served + page)
        until(lambda: browser.evaluate(RENDERED[page]), f"{page} to draw the API", timeout=60, every=0.2)
        asked = _requests(browser.events)
    # The page asked for its own assets, and anything it asked of another host the browser refused
    # before it left (blocked by the page's Content-Security-Policy, not failed for want of a network).
    assert any(url.startswith(served + "/static-offline-docs/") for url in asked)
    here = (served + "/", "data:", "blob:")
    assert {url for url, blocked in asked.items() if not blocked and not url.startswith(here)} == set()


def _requests(events: list[dict[str, Any]]) -> dict[str, str | None]:
    """Each address the page asked for, with the reason the browser blocked it (None: not blocked)."""
    urls = {
        e["params"]["requestId"]: e["params"]["request"]["url"]
        for e in events
        if e["method"] == "Network.requestWillBeSent"
    }
    blocked = {
        e["params"]["requestId"]: e["params"].get("blockedReason")
        for e in events
        if e["method"] == "Network.loadingFailed"
    }
    return {url: blocked.get(request) for request, url in urls.items()}
