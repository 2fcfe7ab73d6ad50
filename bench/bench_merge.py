"""Merges per second at concurrency 1 vs 8, and the schema-valid rate, for three ways of serving
the same model (SmolLM2-135M-Instruct) with the same prompt and sampling:

- ``llama_cpp``: the embedded llama.cpp server with the bundled GGUF (one request at a time);
- ``vllm_offline``: vLLM's offline engine, in the vLLM venv's python (batches of 1 or 8 groups);
- ``vllm_server``: `vllm serve` from that venv, asked through the ``openai`` backend (strict
  json_schema), 1 or 8 requests in flight.

    python bench/bench_merge.py [--groups 8] [--max-tokens 160] [--shapes llama_cpp,vllm_offline,vllm_server]

The vLLM shapes need bench/vllm_cpu/setup.sh's venv: MERGEIT_VLLM_PYTHON, MERGEIT_VLLM_MODEL_DIR
(the bundled GGUF converted to a Hugging Face folder: same weights, dequantised to bfloat16);
without them they are skipped, saying why. Groups are consecutive pairs of rows of the bundled
Alpaca sample. Every shape starts (and warms with one untimed request) before timing, and each
run gets a fresh cache, so every merge is really asked; invalid answers, and answers cut at
max_tokens, are re-asked as in the pipeline. Valid rate: answers that parse under the schema
and were not cut / answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from mergeit_core.merge.backends import open_backend
from mergeit_core.merge.cache import DuckDBResponseCache
from mergeit_core.merge.engine import MergeGroup, MergeReport, run_merges
from mergeit_core.merge.llm import BatchChatBackend, ChatBackend, LLMConfig
from mergeit_core.merge.prompt import MERGED_SAMPLE_SCHEMA, build_merge_messages
from mergeit_core.records import Sample

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_FILE = REPO_ROOT / "mergeit_core" / "sample_data" / "alpaca_sample.jsonl"
SHAPES = ("llama_cpp", "vllm_offline", "vllm_server")
CONCURRENCIES = (1, 8)
SERVER_KEY_ENV = "MERGEIT_BENCH_VLLM_KEY"  # the local server checks no key; the client wants one


@dataclass(frozen=True)
class Measurement:
    shape: str
    concurrency: int
    start_s: float  # server or engine start, warm-up included; not part of wall_s
    groups: int
    wall_s: float
    merged: int
    requests: int
    completion_tokens: int

    @classmethod
    def of(cls, shape: str, concurrency: int, start_s: float, report: MergeReport) -> Measurement:
        return cls(
            shape, concurrency, start_s, len(report.outcomes), report.wall_s, report.merged,
            report.requests, report.completion_tokens,
        )

    def row(self) -> str:
        # Without a quality gate every merged group rests on one valid answer, every other
        # answer was invalid: valid answers = merged.
        return (
            f"| {self.shape} | {self.concurrency} | {self.start_s:.0f} | {self.groups} | {self.wall_s:.1f} | "
            f"{self.merged / self.wall_s:.3f} | {self.merged}/{self.requests} = {self.merged / max(self.requests, 1):.0%} | "
            f"{self.completion_tokens / self.wall_s:.1f} |"
        )


TABLE_HEADER = (
    "| shape | concurrency | start s | groups | wall s | merges/s | valid answers | completion tokens/s |\n"
    "|---|---|---|---|---|---|---|---|"
)


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


def timed_runs(
    shape: str, groups: list[MergeGroup], backend: ChatBackend, config: LLMConfig, start_s: float, workdir: Path
) -> list[Measurement]:
    """A server gets ``concurrency`` requests in flight over all the groups; an offline engine,
    which takes every pending group at once, gets them in batches of ``concurrency`` groups."""
    measurements = []
    for concurrency in CONCURRENCIES:
        cache = DuckDBResponseCache(workdir / f"{shape}-c{concurrency}.duckdb")
        run_config = replace(config, concurrency=concurrency)
        batch = concurrency if isinstance(backend, BatchChatBackend) else len(groups)
        started = time.perf_counter()
        outcomes = []
        for first in range(0, len(groups), batch):
            # Request throughput is what is timed; the merge gate's embedding work would blur it.
            outcomes += run_merges(groups[first : first + batch], backend, cache, run_config, gate=None).outcomes
        report = MergeReport.of(outcomes, time.perf_counter() - started)
        measurements.append(Measurement.of(shape, concurrency, start_s, report))
    return measurements


def bench_llama_cpp(groups: list[MergeGroup], max_tokens: int, workdir: Path) -> list[Measurement]:
    config = LLMConfig(backend="llama_cpp", max_tokens=max_tokens)
    started = time.perf_counter()
    with open_backend(config) as backend:
        warm_up(backend, groups[0])
        return timed_runs("llama_cpp", groups, backend, config, time.perf_counter() - started, workdir)


def bench_vllm_offline_here(groups: list[MergeGroup], max_tokens: int, model_dir: Path, workdir: Path) -> list[Measurement]:
    """Runs in the vLLM venv's python (see ``--offline-worker``)."""
    config = LLMConfig(backend="vllm", model=str(model_dir), max_tokens=max_tokens)
    started = time.perf_counter()
    with open_backend(config) as backend:
        warm_up(backend, groups[0])
        return timed_runs("vllm_offline", groups, backend, config, time.perf_counter() - started, workdir)


def bench_vllm_offline(groups: int, max_tokens: int, python: str, model_dir: Path) -> list[Measurement]:
    """The same script, run by the vLLM venv's python: the main Python has no vLLM."""
    finished = subprocess.run(
        [python, __file__, "--offline-worker", "--groups", str(groups), "--max-tokens", str(max_tokens)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1",
             "MERGEIT_VLLM_MODEL_DIR": str(model_dir), "VLLM_ENGINE_READY_TIMEOUT_S": "1200"},
        capture_output=True, text=True,
    )
    if finished.returncode != 0:
        raise SystemExit(f"the vLLM offline run failed:\n{finished.stderr[-4000:]}")
    return [Measurement(**json.loads(line)) for line in finished.stdout.splitlines() if line.startswith("{")]


def bench_vllm_server(groups: list[MergeGroup], max_tokens: int, python: str, model_dir: Path, workdir: Path) -> list[Measurement]:
    from mergeit_core.merge.vllm_server import VLLMServer

    os.environ.setdefault(SERVER_KEY_ENV, "unused-by-a-local-server")
    started = time.perf_counter()
    with VLLMServer(LLMConfig(backend="vllm", model=str(model_dir)), python=python, on_cpu=True) as server:
        config = LLMConfig(
            backend="openai", model=server.model_alias, base_url=server.base_url, api_key_env=SERVER_KEY_ENV,
            structured_output="json_schema", max_tokens=max_tokens,
        )
        with open_backend(config) as backend:
            warm_up(backend, groups[0])
            return timed_runs("vllm_server", groups, backend, config, time.perf_counter() - started, workdir)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--offline-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shapes = [shape for shape in args.shapes.split(",") if shape]
    if unknown := set(shapes) - set(SHAPES):
        parser.error(f"unknown shape(s): {', '.join(sorted(unknown))}")

    from mergeit_core.merge.vllm_server import converted_model_dir, missing_vllm_setup

    groups = load_groups(args.groups)
    model_dir = converted_model_dir()
    with tempfile.TemporaryDirectory() as tmp:
        if args.offline_worker:
            for measurement in bench_vllm_offline_here(groups, args.max_tokens, model_dir, Path(tmp)):
                print(json.dumps(asdict(measurement)))
            return
        python = os.environ.get("MERGEIT_VLLM_PYTHON", "")
        missing = missing_vllm_setup(python, model_dir)
        runs = {
            "llama_cpp": lambda: bench_llama_cpp(groups, args.max_tokens, Path(tmp)),
            "vllm_offline": lambda: bench_vllm_offline(args.groups, args.max_tokens, python, model_dir),
            "vllm_server": lambda: bench_vllm_server(groups, args.max_tokens, python, model_dir, Path(tmp)),
        }
        measurements: list[Measurement] = []
        for shape in shapes:
            if shape != "llama_cpp" and missing:
                print(f"{shape}: skipped, {missing}", flush=True)
                continue
            try:
                measured = runs[shape]()
            except Exception as error:  # the other shapes are still worth measuring
                print(f"{shape}: failed, {type(error).__name__}: {str(error)[-2000:]}", flush=True)
                continue
            for measurement in measured:
                print(measurement.row(), flush=True)
            measurements += measured
    print(f"\nSmolLM2-135M-Instruct, {args.groups} groups, max_tokens {args.max_tokens}\n{TABLE_HEADER}")
    for measurement in measurements:
        print(measurement.row())
    by_shape = {(m.shape, m.concurrency): m for m in measurements}
    for shape in shapes:
        if (shape, 1) in by_shape and (shape, 8) in by_shape:
            ratio = by_shape[(shape, 1)].wall_s / by_shape[(shape, 8)].wall_s
            print(f"{shape}: concurrency 8 / 1, groups per second: {ratio:.2f}x")
    llama = by_shape.get(("llama_cpp", 8))
    for shape in ("vllm_offline", "vllm_server"):
        if llama and (shape, 8) in by_shape and llama.merged:
            vllm = by_shape[(shape, 8)]
            print(f"{shape} vs llama_cpp at concurrency 8, merges per second: "
                  f"{(vllm.merged / vllm.wall_s) / (llama.merged / llama.wall_s):.2f}x")


if __name__ == "__main__":
    main()
