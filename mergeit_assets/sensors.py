"""Sensors: new source data reruns what it affects, and only that.

1. ``source_files_sensor`` watches the configured sources (the setting `mergeit run` uses) and,
   when a file is added, rewritten or deleted, requests the unpartitioned upstream assets
   (ingest, embeddings of new rows only, re-clustering).
2. ``stale_clusters_sensor`` fires on each ``topic_clusters`` materialization and requests the
   per-cluster assets for the clusters whose membership changed, one run per partition.
   A sensor rather than an automation condition: "changed" is a fact about DuckDB content
   (membership hashes), which the eager condition cannot see — it would rerun every partition
   whenever the unpartitioned parent updates.
3. ``merged_dataset`` carries ``AutomationCondition.eager()``: the default automation sensor
   rebuilds it once those partition runs have finished.
"""

import json
import time

import dagster as dg

from mergeit_assets.assets.selection import topic_clusters
from mergeit_assets.jobs import ingest_and_cluster_job, refresh_cluster_job
from mergeit_assets.resources import MergeitDuckDB, PipelineSettings
from mergeit_core import stages
from mergeit_core.ingest import SourceError
from mergeit_core.records import stable_hash
from mergeit_core.watch import WatchState, scan_sources

UPSTREAM_SELECTION = [dg.AssetKey(k) for k in ("source_instructions", "instruction_embeddings", "topic_clusters")]
PER_CLUSTER_SELECTION = [dg.AssetKey(k) for k in ("selected_subset", "merge_pairs", "merged_samples")]
CHANGED_FILES_TAG = "mergeit/changed_files"


@dg.sensor(
    job=ingest_and_cluster_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="New, rewritten or deleted source files -> ingest, embed, re-cluster.",
)
def source_files_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineSettings):
    previous = WatchState.from_json(json.loads(context.cursor) if context.cursor else None)
    try:
        scan = scan_sources(pipeline.sources, previous, now=time.time())
    except SourceError as error:
        return dg.SkipReason(f"source configuration: {error}")
    context.update_cursor(json.dumps(scan.state.to_json()))
    if not scan.changes:
        waiting = f"; waiting for {len(scan.settling)} file(s) to settle: {', '.join(scan.settling)}" if scan.settling else ""
        return dg.SkipReason(f"no new or changed source files{waiting}")
    described = ", ".join(f"{c.kind} {c.path.rsplit('/', 1)[-1]}" for c in scan.changes)
    return dg.RunRequest(
        run_key=stable_hash([(c.kind, c.path, c.sha256) for c in scan.changes]),
        asset_selection=UPSTREAM_SELECTION,
        tags={CHANGED_FILES_TAG: described[:1000]},
    )


@dg.asset_sensor(
    asset_key=topic_clusters.key,
    job=refresh_cluster_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    required_resource_keys={"duckdb"},
    description="Re-clustering -> per-cluster runs for the clusters whose membership changed.",
)
def stale_clusters_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    duckdb: MergeitDuckDB = context.resources.duckdb
    stale = stages.stale_partitions(duckdb.database)
    if not stale:
        return dg.SkipReason("every cluster partition is up to date")
    return [
        dg.RunRequest(
            # One request per partition per re-clustering run: a later re-clustering asks again.
            run_key=f"{key}:{asset_event.run_id}",
            partition_key=key,
            asset_selection=PER_CLUSTER_SELECTION,
            tags={"mergeit/reason": "cluster membership changed"},
        )
        for key in stale
    ]
