"""Merges per second at concurrency 1 vs 8 on the embedded llama.cpp server (bundled SmolLM2).

    python bench/bench_merge.py [--groups 8] [--max-tokens 160]

Groups are consecutive pairs of rows of the bundled Alpaca sample. Both runs share one server
(started and warmed before timing) and each gets a fresh cache, so every merge is really asked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from mergeit_core.merge.backends import open_backend
from mergeit_core.merge.cache import DuckDBResponseCache
from mergeit_core.merge.engine import MergeGroup, MergeReport, run_merges
from mergeit_core.merge.llm import ChatBackend, LLMConfig
from mergeit_core.merge.prompt import MERGED_SAMPLE_SCHEMA, build_merge_messages
from mergeit_core.records import Sample

SAMPLE_FILE = Path(__file__).resolve().parents[1] / "mergeit_core" / "sample_data" / "alpaca_sample.jsonl"


def load_groups(count: int) -> list[MergeGroup]:
    with SAMPLE_FILE.open(encoding="utf-8") as lines:
        samples = [Sample.normalised(**json.loads(line)) for line in lines]
    if 2 * count > len(samples):
        raise SystemExit(f"--groups {count} needs {2 * count} samples; the file has {len(samples)}")
    return [MergeGroup(f"bench-{i}", "bench", (samples[2 * i], samples[2 * i + 1])) for i in range(count)]


def warm_up(backend: ChatBackend, group: MergeGroup) -> None:
    """One untimed request: model pages and the shared prompt prefix are then in memory."""

    async def ask() -> None:
        try:
            await backend.chat(build_merge_messages(group.members), MERGED_SAMPLE_SCHEMA)
        finally:
            await backend.aclose()

    asyncio.run(ask())


def timed_run(
    groups: list[MergeGroup], backend: ChatBackend, config: LLMConfig, workdir: Path
) -> MergeReport:
    cache = DuckDBResponseCache(workdir / f"cache-c{config.concurrency}.duckdb")
    # Request throughput is what is timed; the merge gate's embedding work would blur the ratio.
    return run_merges(groups, backend, cache, config, gate=None)


def describe(report: MergeReport, concurrency: int) -> str:
    return (
        f"concurrency {concurrency}: {len(report.outcomes)} groups in {report.wall_s:.1f}s = "
        f"{len(report.outcomes) / report.wall_s:.3f} groups/s, {report.merged / report.wall_s:.3f} merges/s "
        f"({report.merged} merged, {report.failed} failed, {report.requests} requests, "
        f"{report.completion_tokens / report.wall_s:.1f} completion tokens/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=160)
    args = parser.parse_args()

    groups = load_groups(args.groups)
    config = LLMConfig(backend="llama_cpp", max_tokens=args.max_tokens)
    with tempfile.TemporaryDirectory() as tmp, open_backend(config) as backend:
        warm_up(backend, groups[0])
        serial = timed_run(groups, backend, replace(config, concurrency=1), Path(tmp))
        concurrent = timed_run(groups, backend, replace(config, concurrency=8), Path(tmp))
    print(describe(serial, 1))
    print(describe(concurrent, 8))
    print(f"ratio (concurrency 8 / 1, groups per second): {serial.wall_s / concurrent.wall_s:.2f}x")


if __name__ == "__main__":
    main()
