"""`mergeit`: run the asset graph, trace a sample's lineage, export the merged dataset."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from mergeit_core import settings
from mergeit_core.export import export_dataset
from mergeit_core.stages import summarize
from mergeit_core.store import connect, run_sql

BACKENDS = ("llama_cpp", "openai", "vllm")


def _instance_home(args: argparse.Namespace) -> Path:
    """$DAGSTER_HOME, else ./dagster_home when run from the repository, else beside the DB file."""
    if args.dagster_home:
        return Path(args.dagster_home)
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    repo_home = Path("dagster_home")
    if (repo_home / "dagster.yaml").is_file():
        return repo_home
    return Path(args.db).resolve().parent / ".mergeit_dagster_home"


def _resources(args: argparse.Namespace) -> dict[str, object]:
    from mergeit_assets.resources import LLMResource, MergeitDuckDB, PipelineSettings

    pipeline = PipelineSettings.from_env()
    llm = LLMResource.from_env()
    pipeline_overrides = {
        "sources": [str(Path(s).resolve()) for s in args.sources] or None,
        "selection_budget": args.budget,
        "similarity_threshold": args.threshold,
        "max_group_size": args.max_group_size,
    }
    llm_overrides = {
        "backend": args.llm,
        "model": args.model,
        "base_url": args.base_url,
        "concurrency": args.concurrency,
        "quality_gate": args.quality_gate or None,
        "structured_output": args.structured_output,
        "servers": args.servers,
    }
    return {
        "duckdb": MergeitDuckDB(database=str(Path(args.db).resolve())),
        "pipeline": pipeline.model_copy(update={k: v for k, v in pipeline_overrides.items() if v is not None}),
        "llm": llm.model_copy(update={k: v for k, v in llm_overrides.items() if v is not None}),
    }


def _print_summary(db_path: str, seconds: float, note: str = "") -> None:
    s = summarize(db_path)
    print(
        f"{note}rows read {s.rows_read} / accepted {s.accepted} / rejected {s.rejected} / duplicate {s.duplicate}; "
        f"clusters {s.clusters}; selected {s.selected}; merge groups {s.merge_groups}; "
        f"merged {s.merged}; failed {s.failed}; rejected by quality {s.rejected_by_quality}; "
        f"final rows {s.final_rows}; {seconds:.1f}s; database {s.db_path}"
    )


def cmd_run(args: argparse.Namespace) -> int:
    import dagster as dg

    from mergeit_assets.pipeline import run_all

    home = _instance_home(args).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        try:
            graph_run = run_all(instance, _resources(args), log_level=args.log_level)
        except dg.DagsterExecutionStepExecutionError as error:
            print(f"mergeit run failed in step {error.step_key}: {error.user_exception}", file=sys.stderr)
            return 1
    previous = graph_run.unchanged_since
    note = (
        f"nothing changed since run {previous.run_id} ({previous.finished_at:%Y-%m-%d %H:%M:%S} UTC): "
        "same source files and settings, nothing rerun; "
        if previous else ""
    )
    _print_summary(str(Path(args.db).resolve()), time.perf_counter() - started, note)
    print(f"Dagster runs recorded in {home} (view them with DAGSTER_HOME={home} dagster dev)")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    with connect(args.db) as conn:
        [sample] = conn.execute(
            "SELECT sample_id, origin, cluster_key, instruction, input, output FROM merged_dataset WHERE sample_id = ?",
            [args.sample_id],
        ).fetchall() or [None]
        if sample is None:
            print(f"no sample {args.sample_id!r} in {args.db}", file=sys.stderr)
            return 1
        result = run_sql(conn, "queries/sources_of_sample.sql", {"sample_id": args.sample_id})
        columns = [d[0] for d in result.description]
        sources = [dict(zip(columns, row)) for row in result.fetchall()]
    sample_id, origin, cluster_key, instruction, input_, output = sample
    if args.json:
        print(json.dumps({
            "sample_id": sample_id, "origin": origin, "cluster_key": cluster_key,
            "instruction": instruction, "input": input_, "output": output, "sources": sources,
        }, indent=2, default=str))
        return 0
    print(f"== sample {sample_id} ({origin}, cluster {cluster_key})")
    _print_fields(instruction, input_, output)
    for source in sources:
        print(f"\n-- source {source['source_id']}  {source['source_file']}:{source['source_row']}")
        if source["model"]:
            print(f"   merged by {source['model']} prompt {source['prompt_version']} run {source['merge_run_id']}")
        _print_fields(source["instruction"], source["input"], source["output"])
    return 0


def _print_fields(instruction: str, input_: str, output: str) -> None:
    print(f"instruction: {instruction}")
    if input_:
        print(f"input: {input_}")
    print(f"output: {output}")


def cmd_export(args: argparse.Namespace) -> int:
    rows = export_dataset(args.db, args.out)
    print(f"wrote {rows} samples to {Path(args.out).resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mergeit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_db(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--db", default=settings.default_db_path(), help="DuckDB file (default $MERGEIT_DB or mergeit.duckdb)")
        return p

    run = with_db(sub.add_parser("run", help="materialize every asset for the given sources"))
    run.add_argument("sources", nargs="*", help="files or folders (default $MERGEIT_SOURCES or the bundled sample)")
    run.add_argument("--llm", choices=BACKENDS, help="LLM backend (default $MERGEIT_LLM_BACKEND or llama_cpp)")
    run.add_argument("--model", help="model name, or a GGUF path for llama_cpp")
    run.add_argument("--base-url", help="OpenAI-compatible endpoint for --llm openai; several, comma-separated, share the load")
    run.add_argument("--servers", type=int, help="embedded llama.cpp servers for --llm llama_cpp (default: one per core, at most 4)")
    run.add_argument("--structured-output", choices=("json_schema", "json_object_schema"),
                     help="schema form: json_schema (OpenAI, vLLM; default) or json_object_schema (a llama.cpp server)")
    run.add_argument("--concurrency", type=int, help="LLM requests in flight (default 8)")
    run.add_argument("--budget", type=int, help="facility-location budget per cluster (default 75)")
    run.add_argument("--threshold", type=float, help="similarity a merge group must exceed (default 0.55)")
    run.add_argument("--max-group-size", type=int, help="largest merge group (default 2)")
    run.add_argument("--quality-gate", action="store_true", help="keep merges only if an LLM judge scores them above their sources")
    run.add_argument("--log-level", default="INFO", help="Dagster console log level (default INFO)")
    run.add_argument("--dagster-home", help="Dagster instance folder (default $DAGSTER_HOME or ./dagster_home)")
    run.set_defaults(handler=cmd_run)

    lineage = with_db(sub.add_parser("lineage", help="a final sample beside every source row behind it"))
    lineage.add_argument("sample_id")
    lineage.add_argument("--json", action="store_true")
    lineage.set_defaults(handler=cmd_lineage)

    export = with_db(sub.add_parser("export", help="write the merged dataset as Alpaca JSONL or Parquet"))
    export.add_argument("out", help="OUT.jsonl or OUT.parquet")
    export.set_defaults(handler=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
