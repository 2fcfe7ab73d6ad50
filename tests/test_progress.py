"""Progress: plain lines every few percent with rate and ETA, and `mergeit run` (not a terminal)
naming every stage on stderr while the Dagster engine's event stream stays out of the console."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from llm_support import Reply, ScriptedServer, merge_json
from support import bundled_rows, write_jsonl

from mergeit_core.progress import LineSink, ProgressReporter

STAGES = ("read", "embed", "cluster", "select", "pair", "merge", "dataset")


def test_lines_every_ten_percent_with_rate_and_eta() -> None:
    lines: list[str] = []
    reporter = ProgressReporter(LineSink(lines.append, every_percent=10, every_s=3600))
    with reporter.stage("embed", total=200, unit="rows") as tracker:
        for done in range(1, 201):
            tracker.update(done, cache_hits=done // 2)
    assert lines[0].startswith("embed 0/200 rows (0%)")
    percents = [int(m.group(1)) for line in lines[1:-1] if (m := re.search(r"\((\d+)%\)", line))]
    assert percents == [10, 20, 30, 40, 50, 60, 70, 80, 90]  # then 100% is the "done" line
    assert all(" rows/s ETA " in line for line in lines[1:-1])
    assert re.match(r"embed 200/200 rows \(100%\) [\d.]+ rows/s done in [\d.]+s; cache hits 100$", lines[-1])


def test_a_stage_without_a_total_reports_start_and_end() -> None:
    lines: list[str] = []
    tracker = ProgressReporter(LineSink(lines.append)).stage("read", total=None, unit="files")
    tracker.advance(1, rows_read=10)
    tracker.advance(1, rows_read=25)
    tracker.finish()
    assert lines[0] == "read 0 files" and lines[-1].startswith("read 2 files")
    assert lines[-1].endswith("; rows read 25")


def test_a_slow_stage_still_shows_life() -> None:
    lines: list[str] = []
    tracker = ProgressReporter(LineSink(lines.append, every_percent=50, every_s=0.0)).stage("merge", 100, "groups")
    for done in (1, 2, 3):
        tracker.update(done)
    assert len(lines) == 4  # the start, then every update: none reaches 50% but each is "every_s" late


@pytest.mark.slow
def test_mergeit_run_reports_every_stage_on_stderr(tmp_path: Path) -> None:
    sources = write_jsonl(tmp_path / "sources" / "part1.jsonl", bundled_rows()[:120])
    with ScriptedServer(lambda index, body: Reply(merge_json(f"Merged {index}"))) as server:
        # Settings from the environment: this test is about what the run shows, not about flags.
        env = {**os.environ, "MERGEIT_SOURCES": str(sources), "MERGEIT_LLM_BACKEND": "openai",
               "MERGEIT_LLM_BASE_URL": server.base_url, "MERGEIT_LLM_MODEL": "scripted", "MERGEIT_BUDGET": "12",
               "MERGEIT_THRESHOLD": "0.35", "MERGEIT_TEST_KEY": "local", "MERGEIT_LLM_API_KEY_ENV": "MERGEIT_TEST_KEY"}
        args = [sys.executable, "-m", "mergeit_assets.cli", "run", "--db", str(tmp_path / "m.duckdb"),
                "--dagster-home", str(tmp_path / "home")]
        result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        quiet = subprocess.run([*args, "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert quiet.returncode == 0, quiet.stderr[-4000:]
    progress = [line for line in result.stderr.splitlines() if line.startswith("[mergeit] ")]
    for stage in STAGES:
        assert any(line.startswith(f"[mergeit] {stage} ") for line in progress), (stage, result.stderr[-4000:])
    groups = server.request_count
    assert groups > 0
    assert re.search(r"\[mergeit\] read 1 files .*rows read 120, accepted 120, rejected 0", result.stderr)
    assert re.search(r"\[mergeit\] embed 120/120 rows \(100%\) [\d.]+ rows/s done in", result.stderr)
    assert re.search(rf"\[mergeit\] merge {groups}/{groups} groups \(100%\) .*requests {groups}, requests per s [\d.]+, "
                     r"cache hits 0, failed 0", result.stderr)
    assert re.search(r"\[mergeit\] select \d+/\d+ clusters .*cluster c\d{3} \d+/\d+", result.stderr)
    # Dagster's engine events (DEBUG) and the run's info log are not on the console by default.
    assert "STEP_START" not in result.stderr and "ASSET_MATERIALIZATION" not in result.stderr
    assert " - DEBUG - " not in result.stderr and " - INFO - " not in result.stderr
    assert "rows read 120 / accepted 120" in result.stdout
    # --quiet: the summary, no progress; the second run answers every merge from the cache.
    assert "[mergeit]" not in quiet.stderr and "rows read 120 / accepted 120" in quiet.stdout
    assert server.request_count == groups
