"""`dagster dev` entry point: `mergeit_assets.definitions:defs`."""

import dagster as dg

from mergeit_assets.jobs import ingest_and_cluster_job, refresh_cluster_job
from mergeit_assets.pipeline import ALL_ASSETS, ALL_CHECKS
from mergeit_assets.resources import default_resources
from mergeit_assets.sensors import source_files_sensor, stale_clusters_sensor

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[ingest_and_cluster_job, refresh_cluster_job],
    sensors=[source_files_sensor, stale_clusters_sensor],
    resources=default_resources(),
)
