"""The asset graph on a real Dagster instance and DuckDB file: definitions, every partition
materialized, row accounting and lineage invariants checked with SQL."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from mergeit_assets import pipeline
from mergeit_assets.partitions import CLUSTERS_PARTITION_NAME
from mergeit_assets.resources import build_resources
from mergeit_core.store import connect, run_sql

INTERFACE_ASSETS = {
    "source_instructions", "instruction_embeddings", "topic_clusters",
    "selected_subset", "merge_pairs", "merged_samples", "merged_dataset",
}
PER_CLUSTER_ASSETS = {"selected_subset", "merge_pairs", "merged_samples"}


def test_definitions_load_with_the_public_names() -> None:
    from mergeit_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == INTERFACE_ASSETS
    for key in graph.get_all_asset_keys():
        partitions = graph.get(key).partitions_def
        if key.to_user_string() in PER_CLUSTER_ASSETS:
            assert isinstance(partitions, dg.DynamicPartitionsDefinition) and partitions.name == "clusters"
        else:
            assert partitions is None
    assert {s.name for s in defs.sensors} == {"source_files_sensor", "stale_clusters_sensor", "automation_sensor"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in defs.sensors)
    assert len(list(defs.asset_checks)) == 3


def scalar(db: Path, sql: str, params: list | None = None):
    with connect(db) as conn:
        return conn.execute(sql, params or []).fetchall()[0][0]


def resources_for(db: Path, sources: list[str], **pipeline_settings) -> dict[str, object]:
    # A short answer budget keeps the tiny model quick; merges still come back whole.
    return build_resources(
        db,
        pipeline={"sources": sources, **pipeline_settings},
        llm={"backend": "llama_cpp", "model": "", "max_tokens": 384, "concurrency": 4},
    )


@pytest.mark.llm
def test_whole_graph_every_partition_on_a_temporary_instance(source_dir: Path, db_path: Path) -> None:
    resources = resources_for(db_path, [str(source_dir)], selection_budget=10)
    with dg.instance_for_test() as instance:
        graph_run = pipeline.run_all(instance, resources)
        results = graph_run.results
        assert graph_run.success and graph_run.unchanged_since is None
        keys = instance.get_dynamic_partitions(CLUSTERS_PARTITION_NAME)
        for asset in PER_CLUSTER_ASSETS:
            assert instance.get_materialized_partitions(dg.AssetKey(asset)) == set(keys)
        checks = [e for r in results for e in r.get_asset_check_evaluations()]
        assert checks and all(e.passed for e in checks)

    # Row accounting: 122 rows read = 120 accepted + 1 rejected + 1 duplicate.
    assert scalar(db_path, "SELECT sum(rows_read) FROM source_files") == 122
    assert scalar(db_path, "SELECT count(*) FROM source_instructions") == 120
    assert scalar(db_path, "SELECT count(*) FROM rejected_rows WHERE field = 'output'") == 1
    assert scalar(db_path, "SELECT count(*) FROM duplicate_rows d JOIN source_instructions s USING (source_id) "
                           "WHERE s.source_row = 4") == 1
    assert scalar(db_path, "SELECT count(*) FROM instruction_embeddings") == 120
    assert scalar(db_path, "SELECT count(*) FROM topic_clusters") == 120
    assert sorted(keys) == [k for (k,) in connect_rows(db_path, "SELECT cluster_key FROM clusters ORDER BY 1")]
    assert len(keys) == 7  # int(sqrt(120 / 2))
    # Selection: min(cluster size, budget) rows in every cluster.
    assert scalar(db_path, "SELECT count(*) FROM (SELECT c.cluster_key FROM clusters c "
                           "LEFT JOIN selected_subset s USING (cluster_key) GROUP BY c.cluster_key, c.size "
                           "HAVING count(s.source_id) <> least(c.size, 10))") == 0
    # Merge groups stay inside one cluster's selection and above the threshold.
    assert scalar(db_path, "SELECT count(*) FROM merge_pairs p LEFT JOIN selected_subset s "
                           "ON s.source_id = p.source_id AND s.cluster_key = p.cluster_key WHERE s.source_id IS NULL") == 0
    assert scalar(db_path, "SELECT min(similarity) FROM merge_pairs") > 0.55
    groups = scalar(db_path, "SELECT count(DISTINCT group_id) FROM merge_pairs")
    assert groups > 0
    assert scalar(db_path, "SELECT count(*) FROM merged_samples") == groups
    merged = scalar(db_path, "SELECT count(*) FROM merged_samples WHERE status = 'merged'")
    # Final set = kept merges + selected rows in no kept merge.
    selected = scalar(db_path, "SELECT count(*) FROM selected_subset")
    assert scalar(db_path, "SELECT count(*) FROM merged_dataset") == selected - merged
    assert_lineage_invariants(db_path)


def connect_rows(db: Path, sql: str) -> list[tuple]:
    with connect(db) as conn:
        return conn.execute(sql).fetchall()


LINEAGE_CHECKS = ("samples_without_lineage", "dangling_lineage", "selected_not_in_exactly_one_sample")


def assert_lineage_invariants(db: Path, checks: tuple[str, ...] = LINEAGE_CHECKS) -> None:
    for check in checks:
        with connect(db) as conn:
            assert run_sql(conn, f"checks/{check}.sql").fetchall()[0][0] == 0, check
    # Merged samples carry provenance: model, prompt version and the Dagster run that made them.
    assert scalar(db, "SELECT count(*) FROM lineage WHERE origin = 'merged' AND "
                      "(model IS NULL OR prompt_version IS NULL OR merge_run_id IS NULL)") == 0
