"""`mergeit` as a user runs it: a subprocess on the bundled sample, then lineage and export."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from llm_support import ScriptedServer, concatenated_merge
from support import run_mergeit

from mergeit_core.merge.gate import REASONS
from mergeit_core.store import connect

pytestmark = pytest.mark.llm

SUMMARY = re.compile(
    r"rows read (\d+) / accepted (\d+) / rejected (\d+) / duplicate (\d+); clusters (\d+); selected (\d+); "
    r"merge groups (\d+); merged (\d+); failed (\d+); rejected by gate (\d+)(?: \(([^)]*)\))?; "
    r"rejected by quality (\d+); final rows (\d+)"
)


def llama_servers() -> set[int]:
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout.splitlines()
    return {int(line.split()[0]) for line in listing if "llama_cpp.server" in line}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess, set[int]]:
    workdir = tmp_path_factory.mktemp("cli")
    servers_before = llama_servers()
    result = run_mergeit("run", "--dagster-home", str(workdir / "home"), cwd=workdir)
    return workdir, result, llama_servers() - servers_before


def test_run_on_the_bundled_sample_prints_the_summary(finished_run) -> None:
    workdir, result, leftover_servers = finished_run
    assert result.returncode == 0, result.stderr[-4000:]
    match = SUMMARY.search(result.stdout)
    assert match, result.stdout
    *counts, gate_reasons, by_quality, final = match.groups()
    read, accepted, rejected, duplicate, clusters, selected, groups, merged, failed, by_gate = map(int, counts)
    by_quality, final = int(by_quality), int(final)
    assert (read, accepted, rejected, duplicate) == (308, 308, 0, 0)
    assert clusters == 12  # int(sqrt(308 / 2))
    assert selected == 308  # every cluster is smaller than the budget of 75: kept whole
    assert groups > 0 and merged + failed + by_gate + by_quality == groups
    # The merge gate is on by default and says why it rejected each merge.
    if by_gate:
        named = {reason: int(n) for reason, n in (part.rsplit(" ", 1) for part in gate_reasons.split(", "))}
        assert sum(named.values()) == by_gate and set(named) <= set(REASONS)
    assert final == selected - merged
    db = workdir / "mergeit.duckdb"
    assert str(db) in result.stdout
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM merged_dataset").fetchall()[0][0] == final
    # The embedded server the run started was stopped with it.
    assert leftover_servers == set()


@pytest.fixture(scope="module")
def merging_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample merged by an endpoint whose merges the gate keeps: the tiny local model's
    mostly are not, so a lineage test on its run would depend on luck."""
    workdir = tmp_path_factory.mktemp("merging")
    with ScriptedServer(concatenated_merge) as server:
        result = run_mergeit("run", "--llm", "openai", "--base-url", server.base_url, "--model", "scripted",
                             "--dagster-home", str(workdir / "home"), cwd=workdir, env={"OPENAI_API_KEY": "unused"})
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def test_lineage_shows_a_merged_sample_beside_its_sources(merging_run: Path) -> None:
    workdir = merging_run
    with connect(workdir / "mergeit.duckdb") as conn:
        [(sample_id,), *_] = conn.execute(
            "SELECT sample_id FROM merged_dataset WHERE origin = 'merged' ORDER BY sample_id"
        ).fetchall()
    shown = run_mergeit("lineage", sample_id, cwd=workdir, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("-- source ") == 2
    assert "alpaca_sample.jsonl:" in shown.stdout
    as_json = json.loads(run_mergeit("lineage", sample_id, "--json", cwd=workdir, timeout=120).stdout)
    assert as_json["sample_id"] == sample_id and len(as_json["sources"]) == 2
    assert all(s["source_row"] >= 1 and s["prompt_version"] for s in as_json["sources"])


def test_lineage_of_an_unknown_sample_fails_clearly(finished_run) -> None:
    workdir, _, _ = finished_run
    shown = run_mergeit("lineage", "nope", cwd=workdir, timeout=120)
    assert shown.returncode == 1 and "no sample 'nope'" in shown.stderr


def test_export_writes_alpaca_jsonl_and_parquet(finished_run) -> None:
    workdir, result, _ = finished_run
    final = int(SUMMARY.search(result.stdout).groups()[-1])
    for name in ("out.jsonl", "out.parquet"):
        exported = run_mergeit("export", name, cwd=workdir, timeout=120)
        assert exported.returncode == 0, exported.stderr
    lines = (workdir / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == final
    assert set(json.loads(lines[0])) == {"instruction", "input", "output"}
    table = pq.read_table(workdir / "out.parquet")
    assert table.num_rows == final and table.column_names == ["instruction", "input", "output"]
