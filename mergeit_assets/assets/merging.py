"""The merging half: each merge group becomes one richer sample written by an LLM, and the final
training set is assembled with row-level lineage."""

import dagster as dg

from mergeit_assets.assets.selection import PER_CLUSTER_BACKFILL, merge_pairs, selected_subset, topic_clusters
from mergeit_assets.partitions import clusters_partitions
from mergeit_assets.reporting import image, progress_for
from mergeit_assets.resources import LLMResource, MergeitDuckDB, PipelineSettings
from mergeit_core import figures, merge_stage, plots, stages


@dg.asset(
    deps=[merge_pairs],
    partitions_def=clusters_partitions,
    backfill_policy=PER_CLUSTER_BACKFILL,
    # Runs share one LLM endpoint (and the embedded server shares 2 cores): the instance caps
    # how many merged_samples steps execute at once (dagster_home/dagster.yaml).
    pool="llm",
    group_name="merging",
    kinds={"duckdb", "openai"},
    description=(
        "One LLM-merged sample per merge group (status merged / failed / rejected by the merge gate / "
        "rejected_by_quality), with the merge gate's reason and figures."
    ),
)
def merged_samples(
    context: dg.AssetExecutionContext, duckdb: MergeitDuckDB, llm: LLMResource
) -> dg.MaterializeResult:
    config = llm.to_config()
    stats = merge_stage.merge_clusters(
        duckdb.database, context.partition_keys, config, quality_gate=llm.quality_gate,
        merge_gate=llm.gate_thresholds(), run_id=context.run.run_id, progress=progress_for(context),
    )
    context.log.info(
        f"{stats.groups} groups: {stats.merged} merged, {stats.failed} failed, "
        f"{stats.rejected} rejected by the merge gate {stats.rejected_by_reason}, "
        f"{stats.rejected_by_quality} rejected by quality; {stats.requests} requests, {stats.cache_hits} cache hits"
    )
    keys = list(context.partition_keys)
    # Each cluster partition shows its own figures; the run_ totals cover every cluster in the run.
    side_by_side = figures.side_by_side_per_cluster(duckdb.database, keys)
    previews = stages.preview_per_cluster(duckdb.database, "merged_samples", keys)
    for key, cluster in figures.cluster_figures(duckdb.database, keys).items():
        context.add_asset_metadata(
            {
                "dagster/row_count": cluster.merge_groups,
                "cluster_size": cluster.size,
                "selected": cluster.selected,
                "groups": cluster.merge_groups,
                "merged": cluster.statuses.get("merged", 0),
                "not_kept": sum(cluster.reasons.values()),
                "not_kept_by_reason": dg.MetadataValue.json(cluster.reasons),
                "requests": stats.requests_by_cluster.get(key, 0),
                "cache_hits": stats.cache_hits_by_cluster.get(key, 0),
                "side_by_side": dg.MetadataValue.md(side_by_side[key]),
                "preview": dg.MetadataValue.md(previews[key]),
            },
            partition_key=key,
        )
    return dg.MaterializeResult(
        metadata={
            "clusters_in_run": len(keys),
            "run_groups": stats.groups,
            "run_merged": stats.merged,
            "run_failed": stats.failed,
            "run_rejected_by_gate": stats.rejected,
            "run_gate_reasons": dg.MetadataValue.json(dict(sorted(stats.rejected_by_reason.items()))),
            "run_rejected_by_quality": stats.rejected_by_quality,
            "run_cache_hits": stats.cache_hits,
            "run_groups_remerged": stats.groups - stats.cache_hits,
            "run_requests": stats.requests,
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
            "wall_seconds": round(stats.seconds, 2),
            "backend": config.backend,
        }
    )


@dg.asset(
    deps=[merged_samples, selected_subset, topic_clusters],
    group_name="merging",
    kinds={"duckdb"},
    # Rebuilt whenever any cluster's merges or selection change, once no upstream run is in flight.
    # A re-clustering alone does not trigger it: the stale-clusters run it causes does, so the
    # dataset is built once, after that run, not also from the stale partitions before it.
    automation_condition=dg.AutomationCondition.eager().ignore(dg.AssetSelection.assets(topic_clusters)),
    description="The final training set: kept merges plus selected rows inside no kept merge, with lineage.",
)
def merged_dataset(
    context: dg.AssetExecutionContext, duckdb: MergeitDuckDB, pipeline: PipelineSettings
) -> dg.MaterializeResult:
    stats = stages.build_merged_dataset(duckdb.database, run_id=context.run.run_id, progress=progress_for(context))
    counts = figures.funnel(duckdb.database)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": stats.samples,
            "merged": stats.merged,
            "selected": stats.selected,
            "source_rows": stats.source_rows,
            "reduction": round(stats.samples / stats.source_rows, 4) if stats.source_rows else None,
            "preview": dg.MetadataValue.md(
                stages.preview(duckdb.database, "merged_dataset")
            ),
            "funnel": image(plots.funnel_png(counts), "funnel"),
            "merge_outcomes": image(
                plots.merge_outcomes_png(figures.reason_counts(figures.merge_outcomes(duckdb.database))), "merge outcomes"
            ),
            # Selection is final here for every cluster: the map with the rows it kept.
            "cluster_map_with_selection": image(
                plots.cluster_map_png(
                    figures.cluster_map(duckdb.database, embedding_backend=pipeline.embedding_backend), title="Selected rows"
                ),
                "selected rows",
            ),
        }
    )
