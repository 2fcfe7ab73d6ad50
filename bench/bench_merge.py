"""Merge throughput, each ratio measured in this one run.

1. Embedded llama.cpp (bundled SmolLM2, single-thread servers): one server vs ``--servers``
   servers behind the endpoint pool, concurrency 8 (goal on 2 cores: >= 1.7x);
2. a latency-bound endpoint (the scripted server answering after ``--delay`` s) with N = 8 and
   32 requests in flight, one endpoint and a pool of four (goal: >= 0.9 x N / delay).

    python bench/bench_merge.py [--groups 8] [--max-tokens 160] [--servers 2] [--delay 1.0]
    python bench/bench_merge.py --latency-only

Groups are consecutive pairs of rows of the bundled Alpaca sample. Servers are started and
warmed before timing and each run gets a fresh cache, so every merge is really asked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from mergeit_core.merge.backends import open_backend
from mergeit_core.merge.cache import DuckDBResponseCache
from mergeit_core.merge.engine import MergeGroup, MergeReport, run_merges
from mergeit_core.merge.llm import ChatBackend, LLMConfig
from mergeit_core.merge.prompt import MERGED_SAMPLE_SCHEMA, build_merge_messages
from mergeit_core.records import Sample

SAMPLE_FILE = Path(__file__).resolve().parents[1] / "mergeit_core" / "sample_data" / "alpaca_sample.jsonl"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from llm_support import Reply, ScriptedServer, in_order, merge_json  # noqa: E402


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
    workdir.mkdir(parents=True, exist_ok=True)
    cache = DuckDBResponseCache(workdir / f"cache-c{config.concurrency}.duckdb")
    return run_merges(groups, backend, cache, config)


def describe(report: MergeReport, concurrency: int) -> str:
    return (
        f"concurrency {concurrency}: {len(report.outcomes)} groups in {report.wall_s:.1f}s = "
        f"{len(report.outcomes) / report.wall_s:.3f} groups/s, {report.merged / report.wall_s:.3f} merges/s "
        f"({report.merged} merged, {report.failed} failed, {report.requests} requests, "
        f"{report.completion_tokens / report.wall_s:.1f} completion tokens/s)"
    )


def bench_servers(groups: list[MergeGroup], max_tokens: int, servers: int, workdir: Path) -> None:
    print(f"== embedded llama.cpp, single-thread servers: 1 vs {servers}, concurrency 8")
    reports = {}
    for count in (1, servers):
        config = LLMConfig(backend="llama_cpp", max_tokens=max_tokens, concurrency=8, servers=count)
        with open_backend(config) as backend:
            warm_up(backend, groups[0])
            reports[count] = timed_run(groups, backend, config, workdir / f"servers-{count}")
        print(describe(reports[count], 8) + f" on {count} server(s)")
    ratio = reports[1].wall_s / reports[servers].wall_s
    print(f"ratio ({servers} servers / 1, groups per second): {ratio:.2f}x (goal on 2 cores: >= 1.7)")


def bench_latency_bound(delay_s: float, workdir: Path) -> None:
    print(f"== latency-bound endpoint: every answer after {delay_s} s")
    os.environ["MERGEIT_BENCH_KEY"] = "local"
    for endpoints in (1, 4):
        with ExitStack() as stack:
            servers = [
                stack.enter_context(ScriptedServer(in_order(then=Reply(merge_json(), delay_s=delay_s))))
                for _ in range(endpoints)
            ]
            for in_flight in (8, 32):
                groups = [
                    MergeGroup(f"lat-{endpoints}-{in_flight}-{i}", "bench", (Sample(f"a{i}", "", "x"), Sample(f"b{i}", "", "y")))
                    for i in range(4 * in_flight)
                ]
                config = LLMConfig(
                    backend="openai", model="scripted", base_url=",".join(s.base_url for s in servers),
                    api_key_env="MERGEIT_BENCH_KEY", concurrency=in_flight,
                )
                cpu_started = time.process_time()
                with open_backend(config) as backend:
                    report = timed_run(groups, backend, config, workdir / f"latency-{endpoints}-{in_flight}")
                # This process's CPU per merge (client, cache writes and the scripted server's
                # threads): what bounds the rate when the CPU is shared, as on the 2-core machine.
                cpu_ms = 1000 * (time.process_time() - cpu_started) / len(groups)
                rate = len(report.outcomes) / report.wall_s
                print(f"{endpoints} endpoint(s), N={in_flight}: {rate:.1f} merges/s = "
                      f"{rate / (in_flight / delay_s):.2f} x N/delay (goal >= 0.9); {report.failed} failed; "
                      f"{cpu_ms:.0f} ms CPU per merge in this process")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--latency-only", action="store_true", help="skip the llama.cpp part")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        bench_latency_bound(args.delay, Path(tmp))
        if not args.latency_only:
            bench_servers(load_groups(args.groups), args.max_tokens, args.servers, Path(tmp))


if __name__ == "__main__":
    main()
