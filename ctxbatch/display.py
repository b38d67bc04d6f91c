"""How ctxbatch shows values: every time as one text (`iso_time`), JSON's fallback for what it cannot
encode (`json_default`), and small HTML tables for Jupyter (`html_table`).

Every time ctxbatch prints or exports (the CLI's text and JSON, results in JSON Lines and CSV, the HTTP
API, alerts) goes through `iso_time`: ISO 8601 in UTC with milliseconds and a `Z`, so a column of them
has one format and `pandas.to_datetime` parses it without being told one (issue 21, item 5).

RunReport, the batch status and the stats each render through `html_table`, so they look alike in a
notebook; their `__repr__` stays one informative line for terminals and logs.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable
from typing import Any

Row = tuple[str, Any]

_STYLE = "border-collapse:collapse;font-size:0.9em"
_CELL = "padding:1px 10px;text-align:left"


class Link:
    """A value shown as a clickable link (the dashboard's address)."""

    def __init__(self, url: str, text: str | None = None) -> None:
        self.url = url
        self.text = text or url

    def __str__(self) -> str:
        return self.text


def iso_time(moment: dt.datetime) -> str:
    """The moment as ctxbatch prints and exports every time: `2026-12-05T03:41:44.123Z`.

    UTC (a naive moment is taken as UTC, as pymongo gives them), milliseconds always, truncated as
    MongoDB stores them; `Z` rather than `+00:00`: what JavaScript's `toISOString()`, Go's RFC 3339
    (Prometheus, Alertmanager) and OpenAPI's `date-time` write, and one suffix for one zone.
    """
    utc = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def json_default(value: Any) -> Any:
    """`json.dumps(..., default=json_default)`: times as `iso_time`, other dates as ISO 8601, anything else
    as its text."""
    if isinstance(value, dt.datetime):
        return iso_time(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def format_value(value: Any) -> str:
    """A cell's HTML: None as a dash, floats to three significant places, links clickable, all escaped."""
    if isinstance(value, Link):
        return f'<a href="{html.escape(value.url)}" target="_blank">{html.escape(value.text)}</a>'
    if value is None:
        return "&ndash;"
    if isinstance(value, dt.datetime):
        return iso_time(value)
    if isinstance(value, float):
        return html.escape(f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return html.escape(str(value))


def html_table(title: str, rows: Iterable[Row]) -> str:
    """A two-column table under a bold title: one row per (label, value)."""
    body = "".join(
        f'<tr><th style="{_CELL}">{html.escape(label)}</th><td style="{_CELL}">{format_value(value)}</td></tr>'
        for label, value in rows
    )
    caption = f'<caption style="text-align:left"><b>{html.escape(title)}</b></caption>'
    return f'<table style="{_STYLE}">{caption}{body}</table>'
