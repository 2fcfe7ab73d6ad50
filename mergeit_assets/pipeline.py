"""Run the whole asset graph on a Dagster instance, every cluster partition included, in three
runs: upstream assets, all cluster partitions as one single-run backfill, then the dataset."""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from mergeit_assets import checks
from mergeit_assets.assets import merging, selection
from mergeit_assets.partitions import CLUSTERS_PARTITION_NAME

ALL_ASSETS = dg.load_assets_from_modules([selection, merging])
ALL_CHECKS = [checks.source_rows_accounted, checks.every_row_embedded, checks.lineage_complete]

UPSTREAM = [selection.source_instructions, selection.instruction_embeddings, selection.topic_clusters]
PER_CLUSTER = [selection.selected_subset, selection.merge_pairs, merging.merged_samples]
DOWNSTREAM = [merging.merged_dataset]


def partition_range_tags(keys: list[str]) -> dict[str, str]:
    """Tags that make one run cover keys[0]..keys[-1] (dynamic partitions keep insertion order)."""
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


def materialize(
    selection_assets,
    instance: dg.DagsterInstance,
    resources: Mapping[str, object],
    *,
    tags: Mapping[str, str] | None = None,
    partition_key: str | None = None,
    log_level: str = "DEBUG",
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*ALL_ASSETS, *ALL_CHECKS],
        selection=selection_assets,
        instance=instance,
        resources=dict(resources),
        tags=dict(tags or {}),
        partition_key=partition_key,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )


def run_all(
    instance: dg.DagsterInstance, resources: Mapping[str, object], *, log_level: str = "DEBUG"
) -> list[dg.ExecuteInProcessResult]:
    results = [materialize(UPSTREAM, instance, resources, log_level=log_level)]
    keys = instance.get_dynamic_partitions(CLUSTERS_PARTITION_NAME)
    if keys:
        results.append(
            materialize(PER_CLUSTER, instance, resources, tags=partition_range_tags(keys), log_level=log_level)
        )
    results.append(materialize(DOWNSTREAM, instance, resources, log_level=log_level))
    return results
