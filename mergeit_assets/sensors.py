"""Sensors: new source data reruns what it affects, in as few runs as possible.

1. ``source_files_sensor`` watches the configured sources (the setting `mergeit run` uses) and,
   when a file is added, rewritten or deleted, requests the unpartitioned upstream assets
   (ingest, embeddings of new rows only, re-clustering). Its first tick compares the files with
   the ones the database last ingested, not with nothing.
2. ``stale_clusters_sensor`` fires on each ``topic_clusters`` materialization and requests the
   per-cluster assets for the clusters whose membership changed, as ONE run over the partition
   range from the first to the last of them (the per-cluster assets have
   ``BackfillPolicy.single_run()`` and loop over ``context.partition_keys``). A run costs a
   process start (torch, Dagster, the models: tens of seconds) while a cluster's own work is
   well under a second, so one run per partition was mostly start-up.
   A sensor rather than an automation condition: "changed" is a fact about DuckDB content
   (membership hashes), which the eager condition cannot see — it would rerun every partition
   whenever the unpartitioned parent updates.
3. ``automation_sensor`` evaluates the automation conditions (``merged_dataset`` is rebuilt
   once the per-cluster runs have finished). It is the project's own, RUNNING by default:
   Dagster's implicit ``default_automation_condition_sensor`` starts STOPPED in a new instance.
"""

import json
import time

import dagster as dg
from duckdb import ConnectionException as DuckDBConnectionException
from duckdb import IOException as DuckDBIOException

from mergeit_assets.assets.selection import topic_clusters
from mergeit_assets.jobs import ingest_and_cluster_job, refresh_cluster_job
from mergeit_assets.partitions import CLUSTERS_PARTITION_NAME
from mergeit_assets.pipeline import partition_range_tags
from mergeit_assets.resources import MergeitDuckDB, PipelineSettings
from mergeit_core import settings, stages
from mergeit_core.ingest import SourceError
from mergeit_core.records import stable_hash
from mergeit_core.watch import WatchState, scan_sources

UPSTREAM_SELECTION = [dg.AssetKey(k) for k in ("source_instructions", "instruction_embeddings", "topic_clusters")]
PER_CLUSTER_SELECTION = [dg.AssetKey(k) for k in ("selected_subset", "merge_pairs", "merged_samples")]
CHANGED_FILES_TAG = "mergeit/changed_files"
STALE_CLUSTERS_TAG = "mergeit/stale_clusters"

# Seconds between sensor evaluations; lower them (e.g. in tests) through the environment.
SENSOR_INTERVAL_S = settings.env_int("MERGEIT_SENSOR_INTERVAL_S", 15)
AUTOMATION_INTERVAL_S = settings.env_int("MERGEIT_AUTOMATION_INTERVAL_S", 30)
# Well inside a sensor evaluation's time limit: a database still busy is retried next tick.
DATABASE_WAIT_S = 10.0


@dg.sensor(
    job=ingest_and_cluster_job,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="New, rewritten or deleted source files -> ingest, embed, re-cluster.",
)
def source_files_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineSettings, duckdb: MergeitDuckDB):
    if context.cursor:
        previous = WatchState.from_json(json.loads(context.cursor))
    else:
        # A new cursor (a new instance, or the sensor reset) starts from what the database holds,
        # so files that `mergeit run` or an earlier instance already ingested are no change.
        try:
            previous = WatchState.from_ingested(stages.ingested_source_files(duckdb.database, timeout_s=DATABASE_WAIT_S))
        except (DuckDBIOException, DuckDBConnectionException) as error:
            return dg.SkipReason(f"database not readable (a long write?), trying again next tick: {error}")
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


def stale_span(stale: list[str], partition_order: list[str]) -> list[str]:
    """The partitions from the first to the last stale one, in the instance's partition order
    (the order a range run resolves). Partitions inside the span whose membership did not
    change are recomputed too: selection and pairing are deterministic and their merges are
    answered from the LLM cache, which costs far less than another run's start-up."""
    positions = [partition_order.index(key) for key in stale if key in partition_order]
    return partition_order[min(positions) : max(positions) + 1] if positions else []


@dg.asset_sensor(
    asset_key=topic_clusters.key,
    job=refresh_cluster_job,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    required_resource_keys={"duckdb"},
    description="Re-clustering -> one run over the cluster partitions whose membership changed.",
)
def stale_clusters_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    duckdb: MergeitDuckDB = context.resources.duckdb
    stale = stages.stale_partitions(duckdb.database)
    span = stale_span(stale, context.instance.get_dynamic_partitions(CLUSTERS_PARTITION_NAME))
    if not span:
        return dg.SkipReason("every cluster partition is up to date")
    return dg.RunRequest(
        # One request per re-clustering run: a later re-clustering asks again.
        run_key=f"stale-clusters:{asset_event.run_id}",
        asset_selection=PER_CLUSTER_SELECTION,
        tags={
            **partition_range_tags(span),
            STALE_CLUSTERS_TAG: f"{len(stale)} of {len(span)} in range: {','.join(stale)}"[:1000],
        },
    )


automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=dg.AssetSelection.all(),
    minimum_interval_seconds=AUTOMATION_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Evaluates the assets' automation conditions: rebuilds merged_dataset after cluster refreshes.",
)
