"""The selection half: source rows -> embeddings -> topic clusters -> per-cluster selection and
merge groups. Each asset reads its inputs, calls mergeit_core, writes DuckDB and reports."""

import dagster as dg

from mergeit_assets.partitions import CLUSTERS_PARTITION_NAME, clusters_partitions
from mergeit_assets.resources import MergeitDuckDB, PipelineSettings
from mergeit_core import embed, stages

# One run can cover every cluster (`mergeit run`, a UI backfill) without paying Dagster's per-run
# start-up once per partition; the asset then loops over context.partition_keys.
PER_CLUSTER_BACKFILL = dg.BackfillPolicy.single_run()


@dg.asset(
    group_name="selection",
    kinds={"duckdb"},
    description="Accepted source rows with file, 1-based row and content hash; rejects and duplicates are accounted for.",
)
def source_instructions(duckdb: MergeitDuckDB, pipeline: PipelineSettings) -> dg.MaterializeResult:
    stats, _ = stages.ingest(duckdb.database, pipeline.sources)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": stats.accepted,
            "files": stats.files,
            "rows_read": stats.rows_read,
            "rejected": stats.rejected,
            "duplicate": stats.duplicate,
            "retired_samples": stats.retired_samples,
            "preview": dg.MetadataValue.md(
                stages.preview(duckdb.database, "SELECT source_id, source_file, source_row, instruction FROM source_instructions ORDER BY source_file, source_row")
            ),
            "rejections": dg.MetadataValue.md(
                stages.preview(duckdb.database, "SELECT source_file, source_row, field, reason FROM rejected_rows ORDER BY source_file, source_row", limit=10)
            ),
        }
    )


@dg.asset(
    deps=[source_instructions],
    group_name="selection",
    kinds={"duckdb", "pytorch"},
    description="all-MiniLM-L6-v2 embeddings (L2-normalised FLOAT[384]); only rows without one are encoded.",
)
def instruction_embeddings(duckdb: MergeitDuckDB, pipeline: PipelineSettings) -> dg.MaterializeResult:
    stats = stages.embed_missing(duckdb.database, batch_size=pipeline.embed_batch_size)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": stats.total,
            "rows_embedded": stats.embedded,
            "model": embed.MODEL_NAME,
            "seconds": round(stats.seconds, 2),
        }
    )


@dg.asset(
    deps=[instruction_embeddings],
    group_name="selection",
    kinds={"duckdb", "scikitlearn"},
    description="PCA(95% variance) + KMeans(k = int(sqrt(n/2)), seed 42); keeps the `clusters` partitions in line.",
)
def topic_clusters(
    context: dg.AssetExecutionContext, duckdb: MergeitDuckDB, pipeline: PipelineSettings
) -> dg.MaterializeResult:
    stats = stages.cluster_topics(duckdb.database, seed=pipeline.kmeans_seed)
    existing = set(context.instance.get_dynamic_partitions(CLUSTERS_PARTITION_NAME))
    live = set(stats.sizes)
    context.instance.add_dynamic_partitions(CLUSTERS_PARTITION_NAME, sorted(live - existing))
    for key in sorted(existing - live):
        context.instance.delete_dynamic_partition(CLUSTERS_PARTITION_NAME, key)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": stats.rows,
            "k": stats.k,
            "pca_components": stats.n_components,
            "explained_variance": round(stats.explained_variance, 4),
            "warm_started": stats.warm_started,
            "cluster_sizes": dg.MetadataValue.json(stats.sizes),
            "added": dg.MetadataValue.json(stats.added),
            "removed": dg.MetadataValue.json(stats.removed),
            "changed": dg.MetadataValue.json(stats.changed),
            "unchanged_count": len(stats.unchanged),
        }
    )


@dg.asset(
    deps=[topic_clusters],
    partitions_def=clusters_partitions,
    backfill_policy=PER_CLUSTER_BACKFILL,
    group_name="selection",
    kinds={"duckdb"},
    description="Up to `selection_budget` rows per cluster by facility location (submodlib, LazyGreedy).",
)
def selected_subset(
    context: dg.AssetExecutionContext, duckdb: MergeitDuckDB, pipeline: PipelineSettings
) -> dg.MaterializeResult:
    results = stages.select_clusters(
        duckdb.database, context.partition_keys, budget=pipeline.selection_budget, run_id=context.run.run_id
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": sum(r.selected for r in results),
            "clusters": len(results),
            "cluster_rows": sum(r.cluster_size for r in results),
            "kept_whole": sum(r.kept_whole for r in results),
            "budget": pipeline.selection_budget,
        }
    )


@dg.asset(
    deps=[selected_subset],
    partitions_def=clusters_partitions,
    backfill_policy=PER_CLUSTER_BACKFILL,
    group_name="selection",
    kinds={"duckdb"},
    description="Disjoint groups of selected rows above the similarity threshold, maximising total similarity.",
)
def merge_pairs(
    context: dg.AssetExecutionContext, duckdb: MergeitDuckDB, pipeline: PipelineSettings
) -> dg.MaterializeResult:
    results = stages.pair_clusters(
        duckdb.database,
        context.partition_keys,
        threshold=pipeline.similarity_threshold,
        max_group_size=pipeline.max_group_size,
        run_id=context.run.run_id,
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": sum(r.grouped_rows for r in results),
            "groups": sum(r.groups for r in results),
            "selected_rows": sum(r.selected for r in results),
            "threshold": pipeline.similarity_threshold,
            "max_group_size": pipeline.max_group_size,
        }
    )
