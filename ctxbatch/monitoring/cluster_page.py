"""The LocalCluster a run starts for itself, showing the ctxbatch page when it has a dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctxbatch.pipeline.cluster import ClusterStart

if TYPE_CHECKING:
    from ctxbatch.config import DaskSettings
    from ctxbatch.pipeline.cluster import ShowPage


def own_cluster(dask: DaskSettings) -> ClusterStart | None:
    """The run's own LocalCluster, starting now; None when the run joins a scheduler instead."""
    return None if dask.scheduler_address else ClusterStart(dask, lambda: dashboard_page(dask))


def dashboard_page(dask: DaskSettings) -> ShowPage | None:
    """What adds the ctxbatch page to a LocalCluster started with a dashboard; None otherwise.

    Called before the cluster is made (in ClusterStart's thread): importing monitoring.dashboard adds
    the page to the dashboard of every scheduler this process makes afterwards (dask_pages.py).
    """
    if dask.dashboard_address is None:
        return None
    from ctxbatch.monitoring.dashboard import show_page

    return show_page
