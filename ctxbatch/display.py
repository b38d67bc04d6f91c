"""How ctxbatch's results show in Jupyter: small HTML tables (`_repr_html_`), one helper for all of them.

RunReport, the batch status and the stats each render through `html_table`, so they look alike in a
notebook; their `__repr__` stays one informative line for terminals and logs.
"""

from __future__ import annotations

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


def format_value(value: Any) -> str:
    """A cell's HTML: None as a dash, floats to three significant places, links clickable, all escaped."""
    if isinstance(value, Link):
        return f'<a href="{html.escape(value.url)}" target="_blank">{html.escape(value.text)}</a>'
    if value is None:
        return "&ndash;"
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
