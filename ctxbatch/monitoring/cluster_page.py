"""Whether a LocalCluster a run starts shows the ctxbatch page, and the import that makes it show it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctxbatch.config import DaskSettings
    from ctxbatch.pipeline.cluster import ShowPage


def dashboard_page(dask: DaskSettings) -> ShowPage | None:
    """What adds the ctxbatch page to a LocalCluster started with a dashboard; None otherwise.

    Call it before the cluster is made: importing monitoring.dashboard adds the page to the
    dashboard of every scheduler this process makes afterwards (dask_pages.py).
    """
    if dask.dashboard_address is None or dask.scheduler_address:
        return None
    from ctxbatch.monitoring.dashboard import show_page

    return show_page
