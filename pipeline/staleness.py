"""Whether an asset partition is fresh, exactly as the Dagster UI decides "Unsynced".

Dagster has no public Python API for an asset's stale status, and re-implementing its rule would drift from the
UI silently, so this module is the one place that imports Dagster's private API (`CachingStaleStatusResolver`);
tests/pipeline/test_run_graph.py and test_incremental.py pin its behaviour, so an upgrade that moves it fails there."""

from __future__ import annotations

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime


class Freshness:
    """Stale status as of the moment it is made: make a new one after each run, which changes it."""

    def __init__(self, instance: dg.DagsterInstance, graph):
        view = AssetGraphView(
            temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
            instance=instance,
            asset_graph=graph,
        )
        self._resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)

    def is_fresh(self, key: dg.AssetKey, partition: str | None = None) -> bool:
        return self._resolver.get_status(key, partition) == StaleStatus.FRESH
