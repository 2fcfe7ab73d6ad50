"""First run vs incremental rerun, driven the way the daemon drives the platform.

Splits a real file 99% / 1% (every 100th row is "new"), materializes everything on the 99%, then
drops the 1% in as a new file, evaluates the source sensor, runs what it requests, evaluates the
stale-clusters sensor, runs the one range of partitions it requests, then rebuilds merged_dataset.
Prints wall times, stale partitions out of all partitions, rows embedded, and LLM requests
counted at the llama.cpp server (one shared embedded server, reached through the
OpenAI-compatible client).

Run: python bench/bench_incremental.py [../shared/data/mergeit-6k.json] [--max-tokens 384]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import dagster as dg

from mergeit_assets import pipeline
from mergeit_assets.definitions import defs
from mergeit_assets.resources import LLMResource, MergeitDuckDB, PipelineSettings
from mergeit_assets.sensors import source_files_sensor, stale_clusters_sensor
from mergeit_core import stages
from mergeit_core.merge.llama_server import LlamaCppServer, default_gguf_path
from mergeit_core.store import connect

warnings.filterwarnings("ignore")
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mergeit-6k.json"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({k: row.get(k, "") for k in ("instruction", "input", "output")}) + "\n")
    past = time.time() - 120
    os.utime(path, (past, past))


def served(server: LlamaCppServer) -> int:
    return server.log_tail(max_chars=10**9).count("POST /v1/chat/completions")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", nargs="?", default=str(DEFAULT_SOURCE))
    parser.add_argument("--max-tokens", type=int, default=384)
    args = parser.parse_args()
    rows = json.loads(Path(args.source).read_text(encoding="utf-8"))
    base = [r for i, r in enumerate(rows) if i % 100 != 99]
    new = [r for i, r in enumerate(rows) if i % 100 == 99]
    work = Path(tempfile.mkdtemp(prefix="mergeit-incremental-"))
    folder = work / "watched"
    folder.mkdir()
    write_jsonl(folder / "base.jsonl", base)
    os.environ["MERGEIT_BENCH_KEY"] = "local"
    log = "WARNING"
    with LlamaCppServer(default_gguf_path(), n_ctx=4096) as server, dg.instance_for_test() as instance:
        resources = {
            "duckdb": MergeitDuckDB(database=str(work / "mergeit.duckdb")),
            "pipeline": PipelineSettings(sources=[str(folder)]),
            "llm": LLMResource(backend="openai", base_url=server.base_url, model="smollm2",
                               api_key_env="MERGEIT_BENCH_KEY", structured_output="json_object_schema",
                               max_tokens=args.max_tokens, concurrency=4),
        }
        context = dg.build_sensor_context(instance=instance, resources=resources)
        source_files_sensor(context)
        cursor = context.cursor

        started = time.perf_counter()
        assert pipeline.run_all(instance, resources, log_level=log).success
        first_s = time.perf_counter() - started
        first_requests = served(server)
        partitions = len(instance.get_dynamic_partitions("clusters"))
        print(f"first run: {len(base)} rows, {partitions} partitions, {first_s:.0f} s, {first_requests} LLM requests")

        write_jsonl(folder / "new.jsonl", new)
        started = time.perf_counter()
        context = dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor)
        request = source_files_sensor(context)
        upstream = pipeline.materialize(request.asset_selection, instance, resources, tags=request.tags, log_level=log)
        embedded = upstream.asset_materializations_for_node("instruction_embeddings")[0].metadata["rows_embedded"].value
        stale = stages.stale_partitions(work / "mergeit.duckdb")
        with dg.partition_loading_context(dynamic_partitions_store=instance):
            refresh = stale_clusters_sensor.evaluate_tick(
                dg.build_sensor_context(instance=instance, resources=resources, definitions=defs)
            ).run_requests or []
        before = served(server)
        for run_request in refresh:  # one run over the stale partitions' range
            pipeline.materialize(run_request.asset_selection, instance, resources, tags=run_request.tags, log_level=log)
        pipeline.materialize(pipeline.DOWNSTREAM, instance, resources, log_level=log)
        rerun_s = time.perf_counter() - started
        rerun_requests = served(server) - before
        with connect(work / "mergeit.duckdb") as conn:
            final = conn.execute("SELECT count(*) FROM merged_dataset").fetchall()[0][0]
        print(f"incremental rerun: {len(new)} new rows, {embedded} embedded, "
              f"{len(stale)}/{len(instance.get_dynamic_partitions('clusters'))} partitions stale, {len(refresh)} run(s), "
              f"{rerun_requests} LLM requests, {rerun_s:.0f} s")
        print(f"first/rerun wall time ratio {first_s / rerun_s:.1f}x; final rows {final}; work dir {work}")


if __name__ == "__main__":
    main()
