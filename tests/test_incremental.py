"""Continuous operation end to end: a new file is noticed by the sensor, only what it affects is
rerun, embeddings and LLM merges already paid for are reused, deletions leave no dangling lineage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest
from support import bundled_rows, served_requests, settled, write_jsonl
from test_dagster_graph import assert_lineage_invariants

from mergeit_assets import pipeline
from mergeit_assets.definitions import defs
from mergeit_assets.partitions import CLUSTERS_PARTITION_NAME
from mergeit_assets.resources import LLMResource, MergeitDuckDB, PipelineSettings
from mergeit_assets.sensors import PER_CLUSTER_SELECTION, source_files_sensor, stale_clusters_sensor
from mergeit_core.merge.llama_server import LlamaCppServer
from mergeit_core import stages
from mergeit_core.store import connect

pytestmark = pytest.mark.llm
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


class Platform:
    """A real instance, DuckDB file and watched folder, driven the way the daemon drives them."""

    def __init__(self, instance: dg.DagsterInstance, folder: Path, db: Path, server: LlamaCppServer) -> None:
        self.instance, self.folder, self.db = instance, folder, db
        self.resources = {
            "duckdb": MergeitDuckDB(database=str(db)),
            "pipeline": PipelineSettings(sources=[str(folder)], selection_budget=12),
            # The shared llama.cpp server through the generic OpenAI-compatible client.
            "llm": LLMResource(
                backend="openai", base_url=server.base_url, model="smollm2", api_key_env="MERGEIT_TEST_KEY",
                structured_output="json_object_schema", max_tokens=320, concurrency=4,
            ),
        }
        self.cursor: str | None = None

    def source_tick(self):
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources=self.resources)
        result = source_files_sensor(context)
        self.cursor = context.cursor
        return result

    def run_request(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        result = pipeline.materialize(
            request.asset_selection, self.instance, self.resources,
            tags=request.tags, partition_key=request.partition_key,
        )
        assert result.success
        return result

    def stale_cluster_requests(self) -> list[dg.RunRequest]:
        context = dg.build_sensor_context(instance=self.instance, resources=self.resources, definitions=defs)
        # Asset sensors are evaluated as the daemon does: a tick over the event log, with the
        # instance at hand to validate the requested dynamic partition keys.
        with dg.partition_loading_context(dynamic_partitions_store=self.instance):
            return list(stale_clusters_sensor.evaluate_tick(context).run_requests or [])

    def clusters(self) -> dict[str, str]:
        with connect(self.db) as conn:
            return dict(conn.execute("SELECT membership_hash, cluster_key FROM clusters").fetchall())

    def groups(self) -> set[str]:
        with connect(self.db) as conn:
            return {g for (g,) in conn.execute("SELECT DISTINCT group_id FROM merge_pairs").fetchall()}


@pytest.fixture
def platform(tmp_path: Path, llama_server: LlamaCppServer):
    os.environ.setdefault("MERGEIT_TEST_KEY", "sk-local-not-a-secret")
    with dg.instance_for_test() as instance:
        yield Platform(instance, tmp_path / "watched", tmp_path / "mergeit.duckdb", llama_server)


def test_new_file_reruns_only_what_it_affects(platform: Platform, llama_server: LlamaCppServer) -> None:
    rows = bundled_rows()
    settled(write_jsonl(platform.folder / "base.jsonl", rows[:200]))
    first = platform.source_tick()
    assert isinstance(first, dg.RunRequest)
    assert pipeline.run_all(platform.instance, platform.resources).success
    clusters_before, groups_before = platform.clusters(), platform.groups()
    assert platform.stale_cluster_requests() == []  # the initial run covered every partition
    # The automation daemon's view before the change: nothing for merged_dataset to do.
    baseline = dg.evaluate_automation_conditions(defs=defs, instance=platform.instance)
    assert isinstance(platform.source_tick(), dg.SkipReason)

    # 1% new rows arrive as a new file.
    settled(write_jsonl(platform.folder / "extra.jsonl", rows[200:202]))
    request = platform.source_tick()
    assert isinstance(request, dg.RunRequest) and "added extra.jsonl" in request.tags["mergeit/changed_files"]
    upstream = platform.run_request(request)
    embedded = [
        e.materialization.metadata["rows_embedded"].value
        for e in upstream.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("instruction_embeddings")
    ]
    assert embedded == [2]

    clusters_after = platform.clusters()
    unchanged = set(clusters_before) & set(clusters_after)
    assert unchanged, "some clusters should be untouched by two new rows"
    assert all(clusters_before[h] == clusters_after[h] for h in unchanged)

    # One request for every stale cluster: a partition range from the first to the last of them.
    stale_keys = set(stages.stale_partitions(platform.db))
    assert stale_keys and stale_keys.isdisjoint({clusters_after[h] for h in unchanged})
    [stale] = platform.stale_cluster_requests()
    assert stale.asset_selection == PER_CLUSTER_SELECTION and stale.partition_key is None
    order = platform.instance.get_dynamic_partitions(CLUSTERS_PARTITION_NAME)
    span = order[order.index(stale.tags[RANGE_START]) : order.index(stale.tags[RANGE_END]) + 1]
    assert stale_keys <= set(span) and {span[0], span[-1]} <= stale_keys

    requests_before = served_requests(llama_server)
    refreshed = platform.run_request(stale)
    for asset in PER_CLUSTER_SELECTION:
        materialized = {e.partition for e in refreshed.get_asset_materialization_events() if e.asset_key == asset}
        assert materialized == set(span), asset
    sent = served_requests(llama_server) - requests_before
    changed_groups = platform.groups() - groups_before
    # Each changed group costs at most its first ask plus two re-asks for invalid answers.
    assert sent <= 3 * len(changed_groups)
    assert platform.stale_cluster_requests() == []

    # The eager condition on merged_dataset requests it once the partitions are done.
    evaluation = dg.evaluate_automation_conditions(defs=defs, instance=platform.instance, cursor=baseline.cursor)
    assert dg.AssetKey("merged_dataset") in requested(evaluation)
    assert pipeline.materialize(pipeline.DOWNSTREAM, platform.instance, platform.resources).success
    with connect(platform.db) as conn:
        new_ids = {s for (s,) in conn.execute(
            "SELECT source_id FROM source_instructions WHERE source_file LIKE '%extra.jsonl'").fetchall()}
        clustered = {s for (s,) in conn.execute("SELECT source_id FROM topic_clusters").fetchall()}
        selected_new = {s for (s,) in conn.execute("SELECT source_id FROM selected_subset").fetchall()} & new_ids
        in_dataset = {s for (s,) in conn.execute("SELECT source_id FROM sample_sources").fetchall()}
    assert len(new_ids) == 2 and new_ids <= clustered
    assert selected_new <= in_dataset
    assert_lineage_invariants(platform.db)


def requested(evaluation) -> set[dg.AssetKey]:
    return {result.key for result in evaluation.results if result.true_subset.size}


def test_deleting_a_source_file_retires_its_rows_without_dangling_lineage(platform: Platform) -> None:
    rows = bundled_rows()
    settled(write_jsonl(platform.folder / "keep.jsonl", rows[:60]))
    doomed = settled(write_jsonl(platform.folder / "doomed.jsonl", rows[60:90]))
    assert isinstance(platform.source_tick(), dg.RunRequest)
    assert pipeline.run_all(platform.instance, platform.resources).success
    with connect(platform.db) as conn:
        from_doomed = conn.execute(
            "SELECT count(*) FROM lineage WHERE source_file LIKE '%doomed.jsonl'").fetchall()[0][0]
    assert from_doomed > 0

    doomed.unlink()
    request = platform.source_tick()
    assert isinstance(request, dg.RunRequest) and "deleted doomed.jsonl" in request.tags["mergeit/changed_files"]
    platform.run_request(request)
    # Right after ingest, before any partition reruns, nothing points at the deleted rows.
    assert_no_rows_from(platform.db, "doomed.jsonl")
    # Selections are stale until their partitions rerun, so only the lineage checks apply yet.
    assert_lineage_invariants(platform.db, checks=("samples_without_lineage", "dangling_lineage"))

    [refresh] = platform.stale_cluster_requests()
    platform.run_request(refresh)
    assert pipeline.materialize(pipeline.DOWNSTREAM, platform.instance, platform.resources).success
    assert_no_rows_from(platform.db, "doomed.jsonl")
    assert_lineage_invariants(platform.db)
    with connect(platform.db) as conn:
        assert conn.execute("SELECT count(*) FROM merged_dataset").fetchall()[0][0] > 0


def assert_no_rows_from(db: Path, name: str) -> None:
    with connect(db) as conn:
        pattern = f"%{name}"
        assert conn.execute("SELECT count(*) FROM source_instructions WHERE source_file LIKE ?", [pattern]).fetchall()[0][0] == 0
        assert conn.execute("SELECT count(*) FROM lineage WHERE source_file LIKE ?", [pattern]).fetchall()[0][0] == 0


def test_partition_keys_survive_a_rerun_on_unchanged_data(platform: Platform) -> None:
    settled(write_jsonl(platform.folder / "base.jsonl", bundled_rows()[:100]))
    platform.source_tick()
    assert pipeline.materialize(pipeline.UPSTREAM, platform.instance, platform.resources).success
    before = platform.clusters()
    assert pipeline.materialize(pipeline.UPSTREAM, platform.instance, platform.resources).success
    assert platform.clusters() == before
    assert platform.stale_cluster_requests() != []  # never materialized yet: every partition is stale
    assert json.loads(platform.cursor)["files"]
