"""Helpers shared by the tests: real rows from the bundled sample, written as source files."""

from __future__ import annotations

import json
from pathlib import Path

from mergeit_core.settings import BUNDLED_SAMPLE


def bundled_rows() -> list[dict]:
    return [json.loads(line) for line in BUNDLED_SAMPLE.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
