"""Helpers shared by the tests: real rows from the bundled sample, written as source files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from mergeit_core.merge.llama_server import LlamaCppServer
from mergeit_core.settings import BUNDLED_SAMPLE


def bundled_rows() -> list[dict]:
    return [json.loads(line) for line in BUNDLED_SAMPLE.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def settled(path: Path, age_s: float = 120) -> Path:
    """Give a finished file an mtime in the past, as a file written a while ago has."""
    past = time.time() - age_s
    os.utime(path, (past, past))
    return path


def served_requests(server: LlamaCppServer) -> int:
    """Chat requests the llama.cpp server has answered, read from its own access log."""
    return server.log_tail(max_chars=10**9).count("POST /v1/chat/completions")


def run_mergeit(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """The installed `mergeit` command, as a user runs it, in a session of its own."""
    command = shutil.which("mergeit")
    assert command, "the `mergeit` command is not installed (pip install -e .)"
    return subprocess.run(
        [command, *args], cwd=cwd, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=timeout, start_new_session=True,
    )
