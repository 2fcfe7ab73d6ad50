"""Shared fixtures: small real source files, a temporary DuckDB file and Dagster instance."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from mergeit_core.settings import BUNDLED_SAMPLE

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_6K = REPO_ROOT.parent / "shared" / "data" / "mergeit-6k.json"

warnings.filterwarnings("ignore", message=".*is currently in beta.*")


def bundled_rows() -> list[dict]:
    return [json.loads(line) for line in BUNDLED_SAMPLE.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


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
