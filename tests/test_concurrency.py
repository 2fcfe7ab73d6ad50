"""Two cluster partitions materialized at the same time, in two processes, on one DuckDB file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg

from mergeit_assets import pipeline
from mergeit_assets.resources import LLMResource, MergeitDuckDB, PipelineSettings
from mergeit_core.store import connect

WORKER = textwrap.dedent(
    """
    import sys, warnings
    warnings.filterwarnings("ignore")
    import dagster as dg
    from mergeit_assets import pipeline
    from mergeit_assets.resources import LLMResource, MergeitDuckDB, PipelineSettings

    db, sources, key, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    resources = {
        "duckdb": MergeitDuckDB(database=db),
        "pipeline": PipelineSettings(sources=[sources], selection_budget=5),
        "llm": LLMResource(),
    }
    with dg.DagsterInstance.get() as instance:
        for _ in range(rounds):
            result = dg.materialize(
                [*pipeline.ALL_ASSETS], selection=[pipeline.selection.selected_subset, pipeline.selection.merge_pairs],
                instance=instance, resources=resources, partition_key=key,
            )
            assert result.success
    print("done", key)
    """
)


def test_two_partitions_materialize_concurrently_in_separate_processes(
    dagster_home: Path, source_dir: Path, db_path: Path
) -> None:
    resources = {
        "duckdb": MergeitDuckDB(database=str(db_path)),
        "pipeline": PipelineSettings(sources=[str(source_dir)], selection_budget=5),
        "llm": LLMResource(),
    }
    with dg.DagsterInstance.get() as instance:
        assert pipeline.materialize(pipeline.UPSTREAM, instance, resources).success
        first, second = instance.get_dynamic_partitions("clusters")[:2]

    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(db_path), str(source_dir), key, "4"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for key in (first, second)
    ]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
        assert "Could not set lock" not in stderr

    with connect(db_path) as conn:
        counts = dict(conn.execute(
            "SELECT cluster_key, count(*) FROM selected_subset GROUP BY cluster_key"
        ).fetchall())
        recorded = conn.execute(
            "SELECT count(*) FROM partition_inputs WHERE cluster_key IN (?, ?)", [first, second]
        ).fetchall()[0][0]
    assert counts == {first: 5, second: 5}
    assert recorded == 4  # selected_subset and merge_pairs, for each of the two partitions
    with dg.DagsterInstance.get() as instance:
        done = instance.get_materialized_partitions(dg.AssetKey("merge_pairs"))
    assert {first, second} <= done
