"""The merging half: each merge group becomes one richer sample written by an LLM, and the final
training set is assembled with row-level lineage."""

import dagster as dg

from mergeit_assets.assets.selection import PER_CLUSTER_BACKFILL, merge_pairs, selected_subset, topic_clusters
from mergeit_assets.partitions import clusters_partitions
from mergeit_assets.resources import LLMResource, MergeitDuckDB
from mergeit_core import merge_stage, stages


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
        duckdb.database,
        context.partition_keys,
        config,
        quality_gate=llm.quality_gate,
        merge_gate=llm.gate_thresholds(),
        run_id=context.run.run_id,
    )
    context.log.info(
        f"{stats.groups} groups: {stats.merged} merged, {stats.failed} failed, "
        f"{stats.rejected} rejected by the merge gate {stats.rejected_by_reason}, "
        f"{stats.rejected_by_quality} rejected by quality; {stats.requests} requests, {stats.cache_hits} cache hits"
    )
    keys = list(context.partition_keys)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": stats.groups,
            "groups": stats.groups,
            "merged": stats.merged,
            "failed": stats.failed,
            "rejected_by_gate": stats.rejected,
            "gate_reasons": dg.MetadataValue.json(dict(sorted(stats.rejected_by_reason.items()))),
            "rejected_by_quality": stats.rejected_by_quality,
            "cache_hits": stats.cache_hits,
            "groups_remerged": stats.groups - stats.cache_hits,
            "requests": stats.requests,
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
            "wall_seconds": round(stats.seconds, 2),
            "backend": config.backend,
            "preview": dg.MetadataValue.md(
                stages.preview(
                    duckdb.database,
                    "SELECT group_id, status, gate_reason, instruction, error FROM merged_samples "
                    "WHERE list_contains(?, cluster_key) ORDER BY group_id",
                    [keys],
                )
            ),
        }
    )


@dg.asset(
    deps=[merged_samples, selected_subset, topic_clusters],
    group_name="merging",
    kinds={"duckdb"},
    # Rebuilt whenever any cluster's merges or selection change, once no upstream run is in flight.
    automation_condition=dg.AutomationCondition.eager(),
    description="The final training set: kept merges plus selected rows inside no kept merge, with lineage.",
)
def merged_dataset(context: dg.AssetExecutionContext, duckdb: MergeitDuckDB) -> dg.MaterializeResult:
    stats = stages.build_merged_dataset(duckdb.database, run_id=context.run.run_id)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": stats.samples,
            "merged": stats.merged,
            "selected": stats.selected,
            "source_rows": stats.source_rows,
            "reduction": round(stats.samples / stats.source_rows, 4) if stats.source_rows else None,
            "preview": dg.MetadataValue.md(
                stages.preview(duckdb.database, "SELECT sample_id, origin, instruction FROM merged_dataset ORDER BY origin, sample_id")
            ),
        }
    )
