"""Continuous operation under a real daemon: `dagster dev` on a fresh instance and an empty folder,
a scripted OpenAI-compatible LLM. A dropped file becomes the final dataset with complete lineage,
with no switch turned on by hand; new rows cost one ingest run, ONE run over the stale cluster
partitions and one dataset rebuild; no run fails."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest
from daemon_support import (
    instance_folder,
    launch_partition_run,
    runs_since,
    sensor_states,
    serving_sensors,
    wait_until_current,
)
from llm_support import ScriptedServer, concatenated_merge
from support import bundled_rows, dagster_dev, settled, write_jsonl
from test_dagster_graph import assert_lineage_invariants, scalar

from mergeit_assets.partitions import CLUSTERS_PARTITION_NAME
from mergeit_assets.sensors import STALE_CLUSTERS_TAG

# Short sensor intervals keep the test short; the defaults are 15 s and 30 s. A phase takes about
# 3 minutes on 2 shared cores (each run is a fresh process importing torch and the models); the
# bound leaves room for a machine several times slower (seen: 8 min for the first phase at load
# 37 on 2 cores) before it calls the wait a failure.
INTERVAL_S = 3
PHASE_TIMEOUT_S = 900
# A first file of 160 real rows (8 clusters), then a second of 8.
FIRST_END, SECOND_END = 160, 168


def rows_of_file_in_dataset(db: Path, name: str) -> int:
    return scalar(db, "SELECT count(DISTINCT source_id) FROM lineage WHERE source_file LIKE ?", [f"%{name}"])


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_dropped_files_reach_the_dataset_in_one_run_per_stage(tmp_path: Path) -> None:
    home, folder, db = instance_folder(tmp_path / "dagster_home"), tmp_path / "watched", tmp_path / "mergeit.duckdb"
    folder.mkdir()
    rows = bundled_rows()
    scripted = ScriptedServer(concatenated_merge)  # merges the gate keeps
    with scripted, dagster_dev(home, {
        "MERGEIT_SOURCES": str(folder), "MERGEIT_DB": str(db),
        "MERGEIT_LLM_BACKEND": "openai", "MERGEIT_LLM_BASE_URL": scripted.base_url, "MERGEIT_LLM_MODEL": "scripted",
        "MERGEIT_LLM_STRUCTURED_OUTPUT": "json_schema", "OPENAI_API_KEY": "sk-local-not-a-secret",
        "MERGEIT_SENSOR_INTERVAL_S": str(INTERVAL_S), "MERGEIT_AUTOMATION_INTERVAL_S": str(INTERVAL_S),
    }, tmp_path / "dev.log", timeout_s=240, ready=serving_sensors) as port, \
            dg.DagsterInstance.from_config(str(home)) as instance:
        # Nothing switched on by hand: the project's sensors, automation included, are running.
        assert sensor_states(port) == {
            "source_files_sensor": "RUNNING", "stale_clusters_sensor": "RUNNING", "automation_sensor": "RUNNING",
        }

        for name, part in (("first.jsonl", rows[:FIRST_END]), ("second.jsonl", rows[FIRST_END:SECOND_END])):
            dropped = time.time()
            settled(write_jsonl(folder / name, part))
            wait_until_current(instance, db, dropped, PHASE_TIMEOUT_S)
            time.sleep(3 * INTERVAL_S)  # long enough for any further (unwanted) run to be launched
            launched = runs_since(instance, dropped)
            assert not launched.not_successful, launched.describe()
            assert (len(launched.ingest), len(launched.cluster_refresh), len(launched.dataset), len(launched.other)) \
                == (1, 1, 1, 0), launched.describe()

            # The one refresh run covered every stale cluster as a partition range, and the
            # instance records each partition of each per-cluster asset as materialized.
            refresh = launched.cluster_refresh[0]
            assert refresh.tags["dagster/asset_partition_range_start"] and STALE_CLUSTERS_TAG in refresh.tags
            keys = set(instance.get_dynamic_partitions(CLUSTERS_PARTITION_NAME))
            assert len(keys) == scalar(db, "SELECT count(*) FROM clusters")
            # (A re-clustering may retire a key; its old materializations stay in the history.)
            for asset in ("selected_subset", "merge_pairs", "merged_samples"):
                assert keys <= instance.get_materialized_partitions(dg.AssetKey(asset))

            # Every row of the file is in the final dataset (clusters here are smaller than the
            # selection budget, so all are kept), and lineage is complete.
            assert scalar(db, "SELECT max(size) FROM clusters") <= 75
            assert rows_of_file_in_dataset(db, name) == len(part)
            assert_lineage_invariants(db)

        assert scalar(db, "SELECT count(DISTINCT source_id) FROM lineage") == len(rows[:SECOND_END])

        # One cluster alone, as from the UI: a run of that single partition.
        key = instance.get_dynamic_partitions(CLUSTERS_PARTITION_NAME)[1]
        run_id = launch_partition_run(port, "refresh_cluster", key)
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while not instance.get_run_by_id(run_id).is_finished and time.monotonic() < deadline:
            time.sleep(1)
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        events = [e.dagster_event for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)]
        assert sorted((e.asset_key.to_user_string(), e.partition) for e in events) == [
            ("merge_pairs", key), ("merged_samples", key), ("selected_subset", key),
        ]
        assert scalar(db, "SELECT count(*) FROM merged_dataset WHERE origin = 'merged'") > 0
        assert scripted.request_count > 0
