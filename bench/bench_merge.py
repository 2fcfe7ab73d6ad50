"""Merge throughput, each ratio measured in this one run. Three modes (``--modes``, comma-separated):

``shapes`` (the default): merges per second at concurrency 1 vs 8, and the schema-valid rate, for
three ways of serving the same model (SmolLM2-135M-Instruct) with the same prompt and sampling:

- ``llama_cpp``: the embedded llama.cpp servers with the bundled GGUF, as `mergeit run` starts
  them (one single-thread server per core, at most 4, each answering one request at a time);
- ``vllm_offline``: vLLM's offline engine, in the vLLM venv's python (batches of 1 or 8 groups);
- ``vllm_server``: `vllm serve` from that venv, asked through the ``openai`` backend (strict
  json_schema), 1 or 8 requests in flight.

``servers``: the issue's baseline (one single-thread llama.cpp server asked one request at a
time) against ``--servers`` single-thread servers behind the endpoint pool (the default layout)
and against one server with every core, both at concurrency 8 (goal on 2 cores: >= 1.7x the
baseline); merges/s and completion tokens/s (the steadier figure: answer lengths vary).

``latency``: a latency-bound endpoint (the tests' scripted server answering after ``--delay`` s,
each endpoint in a process of its own, as a remote one would be) with N = 8 and 32 requests in
flight, one endpoint and a pool of four (goal: >= 0.9 x N / delay), over ``--rounds`` answers per
slot (a run's own start-up, its first HTTP client and connections, weighs less over more rounds,
as in a run of hundreds of groups), with the client's CPU per merge.

    python bench/bench_merge.py [--groups 8] [--max-tokens 160] [--shapes llama_cpp,vllm_offline,vllm_server]
    python bench/bench_merge.py --modes servers,latency [--servers 2] [--delay 1.0]

The vLLM shapes need bench/vllm_cpu/setup.sh's venv: MERGEIT_VLLM_PYTHON, MERGEIT_VLLM_MODEL_DIR
(the bundled GGUF converted to a Hugging Face folder: same weights, dequantised to bfloat16);
without them they are skipped, saying why. Groups are consecutive pairs of rows of the bundled
Alpaca sample. Every shape and server count starts (and warms with one untimed request) before
timing, and each run gets a fresh cache, so every merge is really asked; invalid answers, and
answers cut at max_tokens, are re-asked as in the pipeline. The merge gate is off: request
throughput is what is timed. Valid rate: answers that parse under the schema and were not cut /
answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from mergeit_core.merge.backends import open_backend
from mergeit_core.merge.llama_server import LlamaCppServer, llama_model_path, server_layout
from mergeit_core.merge.cache import DuckDBResponseCache
from mergeit_core.merge.engine import MergeGroup, MergeReport, run_merges
from mergeit_core.merge.llm import BatchChatBackend, ChatBackend, LLMConfig
from mergeit_core.merge.openai_backend import OpenAICompatibleBackend
from mergeit_core.merge.prompt import MERGED_SAMPLE_SCHEMA, build_merge_messages
from mergeit_core.records import Sample

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_FILE = REPO_ROOT / "mergeit_core" / "sample_data" / "alpaca_sample.jsonl"
MODES = ("shapes", "servers", "latency")
SHAPES = ("llama_cpp", "vllm_offline", "vllm_server")
CONCURRENCIES = (1, 8)
LLAMA_MODEL = "smollm2"  # the model the vLLM shapes serve, converted
SERVER_KEY_ENV = "MERGEIT_BENCH_VLLM_KEY"  # the local server checks no key; the client wants one
SCRIPTED_KEY_ENV = "MERGEIT_BENCH_KEY"  # likewise for the scripted endpoints


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
    config = LLMConfig(backend="llama_cpp", model=LLAMA_MODEL, max_tokens=max_tokens)
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


def bench_servers(groups: list[MergeGroup], max_tokens: int, servers: int, workdir: Path) -> None:
    """The issue's baseline (one single-thread server asked one request at a time), the default
    layout of ``servers`` single-thread servers at concurrency 8, and one server given every core
    (``servers=1``) at concurrency 8: the same groups, each with a fresh cache."""
    print(f"== embedded llama.cpp on {os.cpu_count()} cores, {len(groups)} groups", flush=True)
    reports: dict[str, MergeReport] = {}
    baseline = LLMConfig(backend="llama_cpp", model=LLAMA_MODEL, max_tokens=max_tokens, concurrency=1)
    with LlamaCppServer(llama_model_path(LLAMA_MODEL), n_ctx=baseline.n_ctx, threads=1) as server:
        backend = OpenAICompatibleBackend(
            baseline, base_url=server.base_url, model=server.model_alias,
            structured_output=baseline.structured_output_form, api_key_env=None, backend="llama_cpp", max_in_flight=1,
        )
        warm_up(backend, groups[0])
        cache = DuckDBResponseCache(workdir / "servers-baseline.duckdb")
        reports["1 single-thread server, 1 in flight (the issue's baseline)"] = base = run_merges(
            groups, backend, cache, baseline, gate=None
        )
    by_count: dict[int, MergeReport] = {}
    for count in dict.fromkeys((servers, 1)):  # one run when a single server is the default layout
        config = LLMConfig(backend="llama_cpp", model=LLAMA_MODEL, max_tokens=max_tokens, concurrency=8, servers=count)
        layout, threads = server_layout(count)
        with open_backend(config) as backend:
            warm_up(backend, groups[0])
            cache = DuckDBResponseCache(workdir / f"servers-{count}.duckdb")
            by_count[count] = run_merges(groups, backend, cache, config, gate=None)
        reports[f"{layout} server(s) x {threads} thread(s), concurrency 8"] = by_count[count]
    for name, report in reports.items():
        print(
            f"{name}: {report.merged / report.wall_s:.3f} merges/s, "
            f"{report.completion_tokens / report.wall_s:.1f} completion tokens/s "
            f"({report.merged} merged, {report.failed} failed, {report.requests} requests in {report.wall_s:.1f}s)",
            flush=True,
        )
    spread, whole = by_count[servers], by_count[1]
    for name, report in ((f"{servers} servers", spread), ("1 server with every core", whole)):
        print(
            f"{name} / the issue's baseline: merges/s {(report.merged / report.wall_s) / (base.merged / base.wall_s):.2f}x, "
            f"completion tokens/s {(report.completion_tokens / report.wall_s) / (base.completion_tokens / base.wall_s):.2f}x"
            " (goal on 2 cores: >= 1.7)"
        )
    print(
        f"{servers} servers / 1 server with every core: completion tokens/s "
        f"{(spread.completion_tokens / spread.wall_s) / (whole.completion_tokens / whole.wall_s):.2f}x"
    )


@contextmanager
def scripted_endpoint(delay_s: float) -> Iterator[str]:
    """The tests' scripted server answering every request after ``delay_s``, in its own process
    (as a remote endpoint is: its threads take no CPU or GIL from the client); yields its URL."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve-scripted", str(delay_s)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        if not base_url.startswith("http://127.0.0.1:"):
            raise SystemExit(f"the scripted endpoint did not start (said {base_url!r})")
        yield base_url
    finally:
        server.kill()
        server.wait(timeout=10)


def serve_scripted(delay_s: float) -> None:
    """``--serve-scripted``: serve until stdin closes (the parent ended or killed us)."""
    # The tests' scripted server; imported here, as the vLLM venv running --offline-worker lacks
    # what the tests need.
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from llm_support import Reply, ScriptedServer, in_order, merge_json

    with ScriptedServer(in_order(then=Reply(merge_json(), delay_s=delay_s))) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


def bench_latency_bound(delay_s: float, rounds: int, workdir: Path) -> None:
    print(f"== latency-bound endpoint: every answer after {delay_s} s, {rounds} answers per slot", flush=True)
    os.environ.setdefault(SCRIPTED_KEY_ENV, "unused-by-a-local-server")
    for endpoints in (1, 4):
        with ExitStack() as stack:
            base_urls = [stack.enter_context(scripted_endpoint(delay_s)) for _ in range(endpoints)]
            for in_flight in (8, 32):
                groups = [
                    MergeGroup(f"lat-{endpoints}-{in_flight}-{i}", "bench", (Sample(f"a{i}", "", "x"), Sample(f"b{i}", "", "y")))
                    for i in range(rounds * in_flight)
                ]
                config = LLMConfig(
                    backend="openai", model="scripted", base_url=",".join(base_urls),
                    api_key_env=SCRIPTED_KEY_ENV, concurrency=in_flight,
                )
                cache = DuckDBResponseCache(workdir / f"latency-{endpoints}-{in_flight}.duckdb")
                cache.get_many(["-"])  # the database and its schema exist before the clock starts, as in a run
                cpu_started = time.process_time()
                with open_backend(config) as backend:
                    report = run_merges(groups, backend, cache, config, gate=None)
                # The client's CPU per merge (HTTP, parsing, cache writes): what bounds the rate
                # when the CPU is shared with the servers, as on the 2-core machine.
                cpu_ms = 1000 * (time.process_time() - cpu_started) / len(groups)
                rate = len(report.outcomes) / report.wall_s
                print(f"{endpoints} endpoint(s), N={in_flight}: {rate:.1f} merges/s = "
                      f"{rate / (in_flight / delay_s):.2f} x N/delay (goal >= 0.9); {report.failed} failed; "
                      f"{cpu_ms:.1f} ms client CPU per merge", flush=True)


def bench_shapes(args: argparse.Namespace, shapes: list[str], workdir: Path) -> None:
    from mergeit_core.merge.vllm_server import converted_model_dir, missing_vllm_setup

    groups = load_groups(args.groups)
    model_dir = converted_model_dir()
    python = os.environ.get("MERGEIT_VLLM_PYTHON", "")
    missing = missing_vllm_setup(python, model_dir)
    runs = {
        "llama_cpp": lambda: bench_llama_cpp(groups, args.max_tokens, workdir),
        "vllm_offline": lambda: bench_vllm_offline(args.groups, args.max_tokens, python, model_dir),
        "vllm_server": lambda: bench_vllm_server(groups, args.max_tokens, python, model_dir, workdir),
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="shapes", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--servers", type=int, default=2, help="servers mode: llama.cpp servers to compare with one")
    parser.add_argument("--delay", type=float, default=1.0, help="latency mode: seconds before each answer")
    parser.add_argument("--rounds", type=int, default=16, help="latency mode: answers per request slot")
    parser.add_argument("--offline-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-scripted", type=float, metavar="DELAY", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_scripted is not None:
        serve_scripted(args.serve_scripted)
        return
    modes = [mode for mode in args.modes.split(",") if mode]
    shapes = [shape for shape in args.shapes.split(",") if shape]
    if unknown := (set(modes) - set(MODES)) | (set(shapes) - set(SHAPES)):
        parser.error(f"unknown mode(s) or shape(s): {', '.join(sorted(unknown))}")

    with tempfile.TemporaryDirectory() as tmp:
        if args.offline_worker:
            from mergeit_core.merge.vllm_server import converted_model_dir

            groups = load_groups(args.groups)
            for measurement in bench_vllm_offline_here(groups, args.max_tokens, converted_model_dir(), Path(tmp)):
                print(json.dumps(asdict(measurement)))
            return
        if "shapes" in modes:
            bench_shapes(args, shapes, Path(tmp))
        if "servers" in modes:
            bench_servers(load_groups(args.groups), args.max_tokens, args.servers, Path(tmp))
        if "latency" in modes:
            bench_latency_bound(args.delay, args.rounds, Path(tmp))


if __name__ == "__main__":
    main()
