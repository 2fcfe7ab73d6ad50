"""`dagster dev` entry point: `mergeit_assets.definitions:defs`."""

import os
from pathlib import Path

import dagster as dg

from mergeit_assets import instance_home
from mergeit_assets.jobs import ingest_and_cluster_job, refresh_cluster_job
from mergeit_assets.pipeline import ALL_ASSETS, ALL_CHECKS
from mergeit_assets.resources import build_resources
from mergeit_assets.sensors import automation_sensor, source_files_sensor, stale_clusters_sensor

resources = build_resources()
if os.environ.get("DAGSTER_HOME"):
    # Refuse to load rather than show another database's `clusters` partitions beside this one's.
    instance_home.check_serves(Path(os.environ["DAGSTER_HOME"]), Path(resources["duckdb"].database))

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[ingest_and_cluster_job, refresh_cluster_job],
    sensors=[source_files_sensor, stale_clusters_sensor, automation_sensor],
    resources=resources,
    # A run's steps share one process: a step subprocess re-imports torch, Dagster and the
    # models, which costs more than most steps' work. Steps of one run run in sequence anyway
    # (they depend on each other or write the same DuckDB file); the `llm` pool still applies.
    executor=dg.in_process_executor,
)
