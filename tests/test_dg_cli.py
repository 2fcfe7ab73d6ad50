"""The `dg` CLI as a Dagster user reaches for it, run from the repository root as a subprocess:
`dg check defs`, `dg list defs`, and `dg launch` of one cluster partition. Settings reach the
definitions through the environment (MERGEIT_*), as they do under `dagster dev`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from llm_support import ScriptedServer, concatenated_merge
from support import bundled_rows, write_jsonl
from test_dagster_graph import INTERFACE_ASSETS, PER_CLUSTER_ASSETS

from mergeit_core.store import connect

REPO_ROOT = Path(__file__).resolve().parent.parent
DG = Path(sys.executable).with_name("dg")  # installed beside this Python by dagster-dg-cli


def dg_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(DG), *args], cwd=REPO_ROOT, env={**os.environ, "COLUMNS": "200", **(env or {})},
        capture_output=True, text=True, timeout=timeout, start_new_session=True,
    )
    assert result.returncode == 0, f"dg {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_dg_check_defs_loads_the_project(dagster_home: Path) -> None:
    result = dg_cli("check", "defs")

    assert "All definitions loaded successfully." in result.stdout


def test_dg_list_defs_lists_the_seven_assets(dagster_home: Path) -> None:
    listed = json.loads(dg_cli("list", "defs", "--json").stdout)

    assert {asset["asset_key"] for asset in listed["assets"]} == INTERFACE_ASSETS
    assert {check["name"] for check in listed["asset_checks"]} == {
        "source_rows_accounted", "every_row_embedded", "lineage_complete",
    }
    assert {"source_files_sensor", "stale_clusters_sensor"} <= {sensor["name"] for sensor in listed["sensors"]}
    table = dg_cli("list", "defs").stdout
    assert all(f" {key} " in table for key in INTERFACE_ASSETS), table


@pytest.mark.slow
def test_dg_launch_materializes_one_cluster_partition(tmp_path: Path, dagster_home: Path) -> None:
    sources = write_jsonl(tmp_path / "sources" / "data.jsonl", bundled_rows()[:40])
    db = tmp_path / "mergeit.duckdb"
    with ScriptedServer(concatenated_merge) as server:  # merges the gate keeps
        env = {
            "MERGEIT_SOURCES": str(sources.parent),
            "MERGEIT_DB": str(db),
            "MERGEIT_THRESHOLD": "0.4",  # some groups in every cluster of 40 rows
            "MERGEIT_LLM_BACKEND": "openai",
            "MERGEIT_LLM_BASE_URL": server.base_url,
            "MERGEIT_LLM_MODEL": "scripted",
            "MERGEIT_LLM_API_KEY_ENV": "MERGEIT_TEST_KEY",
            "MERGEIT_TEST_KEY": "local",
        }
        dg_cli("launch", "--assets", "source_instructions,instruction_embeddings,topic_clusters", env=env)
        with dg.DagsterInstance.get() as instance:
            keys = instance.get_dynamic_partitions("clusters")
        assert len(keys) == 4  # int(sqrt(40 / 2))
        with connect(db) as conn:  # the largest cluster: the one most sure to have merge groups
            [(launched,)] = conn.execute("SELECT cluster_key FROM clusters ORDER BY size DESC, 1 LIMIT 1").fetchall()
        assert launched in keys
        dg_cli("launch", "--assets", ",".join(sorted(PER_CLUSTER_ASSETS)), "--partition", launched, env=env)

    with dg.DagsterInstance.get() as instance:
        for asset in PER_CLUSTER_ASSETS:
            assert instance.get_materialized_partitions(dg.AssetKey(asset)) == {launched}, asset
        [record] = instance.fetch_materializations(dg.AssetKey("merged_samples"), limit=1).records
        run_id = record.run_id
    with connect(db) as conn:
        def per_cluster(table: str) -> list[tuple]:
            return conn.execute(f"SELECT DISTINCT cluster_key FROM {table} ORDER BY 1").fetchall()

        for table in ("selected_subset", "merge_pairs", "merged_samples"):
            assert per_cluster(table) == [(launched,)], table
        cluster_size = conn.execute("SELECT size FROM clusters WHERE cluster_key = ?", [launched]).fetchall()[0][0]
        assert conn.execute("SELECT count(*) FROM selected_subset").fetchall()[0][0] == cluster_size  # kept whole
        groups = conn.execute("SELECT count(DISTINCT group_id) FROM merge_pairs").fetchall()[0][0]
        merged = conn.execute(
            "SELECT count(*) FROM merged_samples WHERE status = 'merged' AND partition_key = ? AND run_id = ?",
            [launched, run_id],
        ).fetchall()[0][0]
        assert merged == groups > 0
    assert server.request_count == groups
