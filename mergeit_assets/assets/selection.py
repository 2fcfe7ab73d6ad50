"""The selection half: source rows -> embeddings -> topic clusters -> per-cluster selection and
merge groups. Each asset reads its inputs, calls mergeit_core, writes DuckDB and reports."""

from pathlib import Path

import dagster as dg

from mergeit_assets import instance_home
from mergeit_assets.partitions import CLUSTERS_PARTITION_NAME, clusters_partitions
from mergeit_assets.reporting import image, progress_for
from mergeit_assets.resources import MergeitDuckDB, PipelineSettings
from mergeit_core import embed, figures, plots, stages

# One run can cover every cluster (`mergeit run`, a UI backfill) without paying Dagster's per-run
# start-up once per partition; the asset then loops over context.partition_keys.
PER_CLUSTER_BACKFILL = dg.BackfillPolicy.single_run()


@dg.asset(
    group_name="selection",
    kinds={"duckdb"},
    description="Accepted source rows with file, 1-based row and content hash; rejects, duplicates and files not read are accounted for.",
)
def source_instructions(
    context: dg.AssetExecutionContext, duckdb: MergeitDuckDB, pipeline: PipelineSettings
) -> dg.MaterializeResult:
    stats, _ = stages.ingest(duckdb.database, pipeline.sources, progress=progress_for(context))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": stats.accepted,
            "files": stats.files,
            "rows_read": stats.rows_read,
            "rejected": stats.rejected,
            "duplicate": stats.duplicate,
            "retired_samples": stats.retired_samples,
            "skipped_files": stats.skipped_files,
            "ignored_files": stats.ignored_files,
            "preview": dg.MetadataValue.md(
                stages.preview(duckdb.database, "source_instructions")
            ),
            "rejections": dg.MetadataValue.md(
                stages.preview(duckdb.database, "rejected_rows", limit=10)
            ),
            "files_not_read": dg.MetadataValue.md(
                stages.preview(duckdb.database, "skipped_files", limit=10)
            ),
        }
    )


@dg.asset(
    deps=[source_instructions],
    group_name="selection",
    kinds={"duckdb", "pytorch"},
    description="all-MiniLM-L6-v2 embeddings (L2-normalised FLOAT[384]) by the chosen backend; only rows without one are encoded.",
)
def instruction_embeddings(
    context: dg.AssetExecutionContext, duckdb: MergeitDuckDB, pipeline: PipelineSettings
) -> dg.MaterializeResult:
    stats = stages.embed_missing(
        duckdb.database,
        batch_size=pipeline.embed_batch_size,
        embedding_backend=pipeline.embedding_backend,
        progress=progress_for(context),
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": stats.total,
            "rows_embedded": stats.embedded,
            "model": embed.model_id(pipeline.embedding_backend),
            "seconds": round(stats.seconds, 2),
        }
    )


@dg.asset(
    deps=[instruction_embeddings],
    group_name="selection",
    kinds={"duckdb", "scikitlearn"},
    description=(
        "PCA(95% variance) + KMeans(k = int(sqrt(n/2)), seed 42); a small change instead places new rows "
        "at their nearest centroid. Keeps the `clusters` partitions in line."
    ),
)
def topic_clusters(
    context: dg.AssetExecutionContext, duckdb: MergeitDuckDB, pipeline: PipelineSettings
) -> dg.MaterializeResult:
    # The partitions written below describe this database's clusters: the instance serves it alone.
    instance_home.pair(Path(context.instance.root_directory), Path(duckdb.database))
    stats = stages.cluster_topics(
        duckdb.database, seed=pipeline.kmeans_seed, embedding_backend=pipeline.embedding_backend,
        progress=progress_for(context),
    )
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
            # "re-clustered ..." (a full fit) or "assigned N new rows to existing clusters ..."
            "clustering": stats.method,
            "warm_started": stats.warm_started,
            "cluster_sizes": dg.MetadataValue.json(stats.sizes),
            "added": dg.MetadataValue.json(stats.added),
            "removed": dg.MetadataValue.json(stats.removed),
            "changed": dg.MetadataValue.json(stats.changed),
            "unchanged_count": len(stats.unchanged),
            # Selection runs after this asset, per cluster: the map rings the rows the current
            # selection holds, i.e. the last selection of clusters whose membership is unchanged
            # (none on a first run). merged_dataset draws the same map once every cluster is selected.
            "cluster_map": image(
                plots.cluster_map_png(figures.cluster_map(duckdb.database, embedding_backend=pipeline.embedding_backend)),
                "cluster map",
            ),
            "cluster_size_histogram": image(
                plots.cluster_size_histogram_png(stats.sizes, budget=pipeline.selection_budget), "cluster sizes"
            ),
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
        duckdb.database, context.partition_keys, budget=pipeline.selection_budget,
        embedding_backend=pipeline.embedding_backend, run_id=context.run.run_id, progress=progress_for(context),
    )
    # A run may cover many clusters: each partition's materialization gets its own figures.
    for r in results:
        context.add_asset_metadata(
            {"dagster/row_count": r.selected, "cluster_size": r.cluster_size, "selected": r.selected,
             "kept_whole": r.kept_whole},
            partition_key=r.cluster_key,
        )
    return dg.MaterializeResult(
        metadata={
            "clusters_in_run": len(results),
            "run_selected": sum(r.selected for r in results),
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
        embedding_backend=pipeline.embedding_backend,
        run_id=context.run.run_id,
        progress=progress_for(context),
    )
    for r in results:
        context.add_asset_metadata(
            {"dagster/row_count": r.grouped_rows, "selected_rows": r.selected, "groups": r.groups,
             "mean_similarity": round(r.mean_similarity, 4) if r.mean_similarity is not None else None},
            partition_key=r.cluster_key,
        )
    return dg.MaterializeResult(
        metadata={
            "clusters_in_run": len(results),
            "run_groups": sum(r.groups for r in results),
            "threshold": pipeline.similarity_threshold,
            "max_group_size": pipeline.max_group_size,
        }
    )
