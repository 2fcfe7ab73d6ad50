"""Run inside the vLLM venv by tests/test_merge_vllm.py: merge groups with the offline backend.

    python tests/vllm_offline_merge.py REQUEST.json REPORT.json

REQUEST holds the LLMConfig fields, the DuckDB file for the answer cache and the groups; REPORT
gets one outcome per group. The engine starts worker processes with spawn, hence the main guard.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mergeit_core.merge.backends import open_backend
from mergeit_core.merge.cache import DuckDBResponseCache
from mergeit_core.merge.engine import MergeGroup, run_merges
from mergeit_core.merge.llm import LLMConfig
from mergeit_core.merge.vllm_backend import VLLMOfflineBackend
from mergeit_core.records import Sample


def main(request_path: Path, report_path: Path) -> None:
    request = json.loads(request_path.read_text())
    config = LLMConfig(**request["config"])
    groups = [
        MergeGroup(group["group_id"], group["cluster_key"], tuple(Sample(**member) for member in group["members"]))
        for group in request["groups"]
    ]
    with open_backend(config) as backend:
        assert isinstance(backend, VLLMOfflineBackend), type(backend)
        report = run_merges(groups, backend, DuckDBResponseCache(request["db"]), config)
    report_path.write_text(
        json.dumps(
            {
                "requests": report.requests,
                "outcomes": [
                    {
                        "group_id": outcome.group_id,
                        "status": outcome.status,
                        "error": outcome.error,
                        "sample": outcome.sample.as_dict() if outcome.sample else None,
                        "requests": outcome.requests,
                    }
                    for outcome in report.outcomes
                ],
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
