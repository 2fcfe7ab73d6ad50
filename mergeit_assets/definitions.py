"""`dagster dev` entry point: `mergeit_assets.definitions:defs`."""

import os
from pathlib import Path

from mergeit_assets import instance_home

HOME = Path(os.environ["DAGSTER_HOME"]) if os.environ.get("DAGSTER_HOME") else None
if HOME is not None:
    # Before the modules below read their settings: what the environment leaves unset comes
    # from the latest `mergeit run` on this instance, so its sensors rerun the database alike.
    instance_home.apply_recorded_settings(HOME, os.environ)

import dagster as dg  # noqa: E402

from mergeit_assets.jobs import ingest_and_cluster_job, refresh_cluster_job  # noqa: E402
from mergeit_assets.pipeline import ALL_ASSETS, ALL_CHECKS  # noqa: E402
from mergeit_assets.resources import build_resources  # noqa: E402
from mergeit_assets.sensors import automation_sensor, source_files_sensor, stale_clusters_sensor  # noqa: E402

resources = build_resources()
if HOME is not None:
    # Refuse to load rather than show another database's `clusters` partitions beside this one's.
    instance_home.check_serves(HOME, Path(resources["duckdb"].database))

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
