"""The one place ctxbatch reaches into distributed's dashboard: distributed has no public API for pages.

Written against distributed 2026.8.0 (with bokeh 3.9.2). What it relies on:
- `distributed.dashboard.scheduler.applications`, route -> `fn(scheduler, extra, doc)`: a Scheduler
  builds its dashboard's Bokeh server from this dict when it is made, and the "More..." menu and
  `/individual-plots.json` list its `/individual-*` routes. So a page added here shows on every
  scheduler made afterwards in this process (a preload module is imported while the Scheduler is
  built, before its dashboard: early enough).
- `distributed.dashboard.components.scheduler.env` and `BOKEH_THEME`: the Jinja template
  ("simple.html", Dask's navigation bar) and the theme of distributed's own pages.
`check()` says which of these moved; tests/test_dashboard.py fails loudly through it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # bokeh is imported by the dashboard itself: a run without one never loads it
    from bokeh.document import Document

PAGE = "/ctxbatch"  # Dask's navigation bar around it
INDIVIDUAL = "/individual-ctxbatch"  # the bare page: "More..." menu, /individual-plots.json, JupyterLab
DISTRIBUTED_WRITTEN_AGAINST = "2026.8.0"
SOURCE = "ctxbatch-dashboard"  # the scheduler plugin naming the database the page reads (dashboard.py)

Page = Callable[[Any, "Document"], None]  # (scheduler, doc)


class DashboardHookChanged(RuntimeError):
    """Raised when distributed no longer has what this module hooks into (see the module's docstring)."""


def check() -> tuple[dict[str, Any], Any, Any]:
    """distributed's page registry, template environment and theme; DashboardHookChanged if one moved."""
    import distributed

    found = []
    for module, name in (
        ("distributed.dashboard.scheduler", "applications"),
        ("distributed.dashboard.components.scheduler", "env"),
        ("distributed.dashboard.components.scheduler", "BOKEH_THEME"),
    ):
        value = getattr(importlib.import_module(module), name, None)
        if value is None:
            raise DashboardHookChanged(
                f"distributed {distributed.__version__} has no {module}.{name} (this was written against "
                f"{DISTRIBUTED_WRITTEN_AGAINST}): ctxbatch/monitoring/dask_pages.py needs updating"
            )
        found.append(value)
    applications, env, theme = found
    if not isinstance(applications, dict):
        raise DashboardHookChanged(f"distributed.dashboard.scheduler.applications is a {type(applications).__name__}")
    return applications, env, theme


def add_page(page: Page, title: str) -> None:
    """Serve `page` at /ctxbatch and /individual-ctxbatch on every dashboard made from now on (idempotent)."""
    applications, env, theme = check()

    def framed(scheduler: Any, extra: dict[str, Any], doc: Document) -> None:
        page(scheduler, doc)
        doc.title = title
        doc.theme = theme
        doc.template = env.get_template("simple.html")
        doc.template_variables.update(extra)

    def bare(scheduler: Any, extra: dict[str, Any], doc: Document) -> None:
        page(scheduler, doc)
        doc.title = title
        doc.theme = theme

    applications[PAGE] = framed
    applications[INDIVIDUAL] = bare


def page_link(client: Any) -> str | None:
    """The page's address when the client's scheduler serves it (a run's own cluster, or the preload); else None."""
    # A lambda travels by value: the scheduler needs no ctxbatch to answer.
    if not client.run_on_scheduler(lambda dask_scheduler, name=SOURCE: name in dask_scheduler.plugins):
        return None
    return page_url(client.dashboard_link)


def page_url(dashboard_link: str) -> str:
    """The page's address from a dashboard link (`http://host:port/status` -> `http://host:port/ctxbatch`)."""
    base = dashboard_link.rsplit("/", 1)[0] if dashboard_link.endswith("/status") else dashboard_link.rstrip("/")
    return base + PAGE
