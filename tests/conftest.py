"""Shared fixtures: small real source files, a temporary DuckDB file and Dagster instance."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from llm_support import llama_server  # noqa: F401  (one real llama.cpp server per test session)
from support import bundled_rows, write_jsonl

# The default model (Qwen2.5-0.5B) is fetched on first use and merges 2-3x slower than the bundled
# SmolLM2. Tests that name no model check the machinery, not merge quality: they run SmolLM2,
# in this process and in every `mergeit` subprocess they start.
os.environ.setdefault("MERGEIT_LLM_MODEL", "smollm2")


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    """120 real rows in two files, plus one bad row and one exact duplicate."""
    rows = bundled_rows()[:120]
    folder = tmp_path / "sources"
    write_jsonl(folder / "part1.jsonl", rows[:80])
    write_jsonl(folder / "part2.jsonl", rows[80:] + [{"instruction": "No output here", "input": ""}, rows[3]])
    return folder


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "mergeit.duckdb"


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real, persistent Dagster instance folder, shared with any subprocess the test starts."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home
