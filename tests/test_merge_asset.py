"""merged_samples as an asset: a second materialization sends nothing, an interrupted one resumes
with only what was not answered, failures keep their sources, and every answer lands with lineage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest
from llm_support import Fail, Reply, ScriptedServer, merge_json
from support import served_requests
from test_dagster_graph import assert_lineage_invariants, scalar

from mergeit_assets import pipeline
from mergeit_assets.resources import LLMResource, MergeitDuckDB, PipelineSettings
from mergeit_core.merge.llama_server import LlamaCppServer
from mergeit_core.store import connect

# A low threshold gives many groups on 120 rows, so "halfway" means something.
THRESHOLD = 0.35


def upstream_ready(instance: dg.DagsterInstance, db: Path, sources: Path) -> dict[str, object]:
    resources = {
        "duckdb": MergeitDuckDB(database=str(db)),
        "pipeline": PipelineSettings(sources=[str(sources)], selection_budget=12, similarity_threshold=THRESHOLD),
    }
    assert pipeline.materialize(pipeline.UPSTREAM, instance, {**resources, "llm": LLMResource()}).success
    keys = instance.get_dynamic_partitions("clusters")
    selection = [pipeline.selection.selected_subset, pipeline.selection.merge_pairs]
    assert pipeline.materialize(selection, instance, {**resources, "llm": LLMResource()},
                                tags=pipeline.partition_range_tags(keys)).success
    return resources


def merge_all_partitions(instance: dg.DagsterInstance, resources: dict, llm: LLMResource) -> dg.ExecuteInProcessResult:
    keys = instance.get_dynamic_partitions("clusters")
    result = pipeline.materialize([pipeline.merging.merged_samples], instance, {**resources, "llm": llm},
                                  tags=pipeline.partition_range_tags(keys))
    assert result.success
    return result



@pytest.mark.llm
def test_second_materialization_sends_zero_requests(
    source_dir: Path, db_path: Path, llama_server: LlamaCppServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MERGEIT_TEST_KEY", "local")
    llm = LLMResource(backend="openai", base_url=llama_server.base_url, model="smollm2", api_key_env="MERGEIT_TEST_KEY",
                      structured_output="json_object_schema", max_tokens=320, concurrency=4)
    with dg.instance_for_test() as instance:
        resources = upstream_ready(instance, db_path, source_dir)
        groups = scalar(db_path, "SELECT count(DISTINCT group_id) FROM merge_pairs")
        before = served_requests(llama_server)
        merge_all_partitions(instance, resources, llm)
        first_requests = served_requests(llama_server) - before
        assert first_requests >= groups > 0
        with connect(db_path) as conn:
            first = conn.execute("SELECT group_id, status, instruction, output FROM merged_samples ORDER BY 1").fetchall()

        before = served_requests(llama_server)
        again = merge_all_partitions(instance, resources, llm)
        assert served_requests(llama_server) - before == 0
        metadata = again.asset_materializations_for_node("merged_samples")[0].metadata
        assert metadata["requests"].value == 0 and metadata["cache_hits"].value == groups
        with connect(db_path) as conn:
            assert conn.execute("SELECT group_id, status, instruction, output FROM merged_samples ORDER BY 1").fetchall() == first
        assert pipeline.materialize(pipeline.DOWNSTREAM, instance, {**resources, "llm": llm}).success
    # SmolLM2-135M's answers parse; the merge gate may keep or reject them (test_merge_gate_asset.py).
    assert scalar(db_path, "SELECT count(*) FROM merged_samples WHERE status IN ('merged', 'rejected')") > 0
    assert_lineage_invariants(db_path)


WORKER = textwrap.dedent(
    """
    import sys, warnings
    warnings.filterwarnings("ignore")
    import dagster as dg
    from mergeit_assets import pipeline
    from mergeit_assets.resources import LLMResource, MergeitDuckDB, PipelineSettings

    db, sources, base_url, threshold = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    resources = {
        "duckdb": MergeitDuckDB(database=db),
        "pipeline": PipelineSettings(sources=[sources], selection_budget=12, similarity_threshold=threshold),
        "llm": LLMResource(backend="openai", base_url=base_url, model="scripted", api_key_env="MERGEIT_TEST_KEY",
                           concurrency=1, merge_gate=False),
    }
    with dg.DagsterInstance.get() as instance:
        keys = instance.get_dynamic_partitions("clusters")
        pipeline.materialize([pipeline.merging.merged_samples], instance, resources,
                             tags=pipeline.partition_range_tags(keys))
    """
)


def test_interrupted_partition_rerun_sends_only_the_rest(
    source_dir: Path, db_path: Path, dagster_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MERGEIT_TEST_KEY", "local")
    # Fault injection: a slow but valid server, and a worker killed halfway through. Its answers are
    # placeholders, so the merge gate is off: resumption is the subject here.
    with ScriptedServer(lambda index, body: Reply(merge_json(f"Merged {index}"), delay_s=0.25)) as server:
        with dg.DagsterInstance.get() as instance:
            resources = upstream_ready(instance, db_path, source_dir)
        groups = scalar(db_path, "SELECT count(DISTINCT group_id) FROM merge_pairs")
        assert groups >= 6
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(db_path), str(source_dir), server.base_url, str(THRESHOLD)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while server.request_count < groups // 2 and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.05)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        answered = scalar(db_path, "SELECT count(*) FROM llm_cache WHERE purpose = 'merge'")
        assert 0 < answered < groups, "the worker should die halfway, with some answers stored"
        assert scalar(db_path, "SELECT count(*) FROM merged_samples") == 0  # the partition never finished

        sent_before = server.request_count
        with dg.DagsterInstance.get() as instance:
            llm = LLMResource(backend="openai", base_url=server.base_url, model="scripted",
                              api_key_env="MERGEIT_TEST_KEY", concurrency=4, merge_gate=False)
            result = merge_all_partitions(instance, resources, llm)
        assert server.request_count - sent_before == groups - answered
    metadata = result.asset_materializations_for_node("merged_samples")[0].metadata
    assert metadata["cache_hits"].value == answered
    assert scalar(db_path, "SELECT count(*) FROM merged_samples WHERE status = 'merged'") == groups


def test_unreachable_llm_fails_groups_and_keeps_their_sources(
    source_dir: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MERGEIT_TEST_KEY", "local")
    with ScriptedServer(lambda index, body: Fail(503)) as server, dg.instance_for_test() as instance:
        resources = upstream_ready(instance, db_path, source_dir)
        llm = LLMResource(backend="openai", base_url=server.base_url, model="scripted", api_key_env="MERGEIT_TEST_KEY",
                          max_retries=1, request_timeout_s=5.0)
        merge_all_partitions(instance, resources, llm)
        assert pipeline.materialize(pipeline.DOWNSTREAM, instance, {**resources, "llm": llm}).success
    groups = scalar(db_path, "SELECT count(DISTINCT group_id) FROM merge_pairs")
    assert scalar(db_path, "SELECT count(*) FROM merged_samples WHERE status = 'failed'") == groups
    assert scalar(db_path, "SELECT count(*) FROM merged_dataset WHERE origin = 'merged'") == 0
    # Every selected row is still a training sample, as itself.
    assert scalar(db_path, "SELECT count(*) FROM merged_dataset") == scalar(db_path, "SELECT count(*) FROM selected_subset")
    assert scalar(db_path, "SELECT count(*) FROM llm_cache") == 0  # transport failures are never cached
    assert_lineage_invariants(db_path)
