"""Run the whole asset graph on a Dagster instance, every cluster partition included, in three
runs: upstream assets, the cluster partitions as one single-run backfill, then the dataset.

A rerun first proves cheaply whether anything changed (mergeit_core.fingerprint): with the same
source bytes and settings on a database nothing has written to since the last complete run, no
run starts and the check is recorded as an observation of ``merged_dataset``. When only sources
changed, the per-cluster run covers the partitions whose membership moved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import dagster as dg

from mergeit_assets import checks
from mergeit_assets.assets import merging, selection
from mergeit_assets.partitions import CLUSTERS_PARTITION_NAME
from mergeit_assets.resources import LLMResource, PipelineSettings
from mergeit_core import embed, fingerprint, stages

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


@dataclass(frozen=True)
class GraphRun:
    """What ``run_all`` did: its Dagster runs, or the complete run nothing changed since."""

    results: list[dg.ExecuteInProcessResult] = field(default_factory=list)
    unchanged_since: fingerprint.CompleteRun | None = None
    partitions_run: int = 0
    partitions: int = 0

    @property
    def success(self) -> bool:
        return all(result.success for result in self.results)


def run_inputs(resources: Mapping[str, object]) -> fingerprint.RunInputs:
    """What the fingerprint of a run with ``resources`` covers (see mergeit_core.fingerprint)."""
    settings: PipelineSettings = resources["pipeline"]  # type: ignore[assignment]
    llm: LLMResource = resources["llm"]  # type: ignore[assignment]
    return fingerprint.run_inputs(
        settings.sources,
        settings.model_dump(),
        llm.to_config(),
        quality_gate=llm.quality_gate,
        merge_gate=llm.gate_thresholds(),
    )


def _stale_span(db_path: str, keys: list[str]) -> list[str]:
    """The keys from the first stale partition to the last (one run covers a contiguous range)."""
    stale = set(stages.stale_partitions(db_path))
    positions = [i for i, key in enumerate(keys) if key in stale]
    return keys[positions[0]:positions[-1] + 1] if positions else []


def run_all(
    instance: dg.DagsterInstance,
    resources: Mapping[str, object],
    *,
    log_level: str = "DEBUG",
    invocation: str | None = None,
) -> GraphRun:
    """``invocation``: what `mergeit run` was asked (fingerprint.invocation_hash), recorded with a
    complete run so that the same command again proves it has nothing to do before building any of
    this."""
    db_path: str = resources["duckdb"].database  # type: ignore[attr-defined]
    inputs = run_inputs(resources)
    previous = fingerprint.last_complete_run(db_path)
    untouched = fingerprint.untouched_since(db_path, previous)
    if untouched and previous is not None and (previous.sources_hash, previous.settings_hash) == (
        inputs.sources_hash, inputs.settings_hash
    ):
        instance.report_runless_asset_event(
            dg.AssetObservation(
                asset_key=merging.merged_dataset.key,
                description="mergeit run: sources and settings unchanged, nothing rerun",
                metadata={"unchanged_since_run": previous.run_id, "sources_hash": inputs.sources_hash},
            )
        )
        if invocation is not None:
            fingerprint.remember_invocation(db_path, invocation)
        return GraphRun(unchanged_since=previous)
    if previous is None or previous.sources_hash != inputs.sources_hash:
        # New rows are likely: the model loads while Dagster starts the run and ingest reads.
        embed.load_in_background(backend=resources["pipeline"].embedding_backend)  # type: ignore[attr-defined]
    results = [materialize(UPSTREAM, instance, resources, log_level=log_level)]
    keys = instance.get_dynamic_partitions(CLUSTERS_PARTITION_NAME)
    # Partitions whose membership did not move hold what these settings compute from it, as long
    # as the last complete run had the same settings and nothing else wrote since.
    same_settings = untouched and previous is not None and previous.settings_hash == inputs.settings_hash
    to_run = _stale_span(db_path, keys) if same_settings else keys
    if to_run:
        results.append(
            materialize(PER_CLUSTER, instance, resources, tags=partition_range_tags(to_run), log_level=log_level)
        )
    final = materialize(DOWNSTREAM, instance, resources, log_level=log_level)
    results.append(final)
    fingerprint.record_complete_run(db_path, final.run_id, inputs, stages.now_utc(), invocation)
    return GraphRun(results=results, partitions_run=len(to_run), partitions=len(keys))
