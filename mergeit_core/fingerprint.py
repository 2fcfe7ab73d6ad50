"""Proving that a run of the whole graph has nothing to do, cheaply.

A run's inputs are the bytes of its source files and the settings that shape results. After a
run that left nothing to retry, they are recorded with a stamp of the database it left. A later
run whose inputs hash the same, on a database whose stamp has not moved (no stage wrote since,
from `mergeit run`, the UI or a sensor), would recompute exactly what is there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from mergeit_core import embed, models, settings
from mergeit_core.ingest import scan_source_paths
from mergeit_core.merge.gate import GateThresholds
from mergeit_core.merge.llm import LLMConfig, model_identity
from mergeit_core.merge.prompt import PROMPT_VERSION, SCORE_PROMPT_VERSION
from mergeit_core.records import stable_hash
from mergeit_core.store import connect, run_sql, sql_dir
from mergeit_core.watch import file_sha256

# Settings that change how fast, not what: a rerun that changes only these has nothing to redo.
HOW_NOT_WHAT = frozenset({
    "concurrency",
    "servers",
    "request_timeout_s",
    "total_timeout_s",
    "max_retries",
    "embed_batch_size",
    "vllm_kv_cache_bytes",
})


@dataclass(frozen=True)
class RunInputs:
    sources_hash: str
    settings_hash: str


@dataclass(frozen=True)
class CompleteRun:
    run_id: str
    sources_hash: str
    settings_hash: str
    database_stamp: str
    finished_at: datetime
    invocation_hash: str | None = None  # set by `mergeit run`; runs from Dagster leave it empty


def run_inputs(
    sources: Sequence[str | Path],
    pipeline: Mapping[str, object],
    llm: LLMConfig,
    *,
    quality_gate: bool,
    merge_gate: GateThresholds | None,
) -> RunInputs:
    """Hashes of the sources and of the settings that shape results.

    Sources: every source file's bytes (by path), and the paths met in source folders that are
    not read (the summary counts them). Settings: the pipeline's and the LLM's as given, less
    those in HOW_NOT_WHAT; what the stages resolve them to (the model the backend will report,
    which an empty model leaves to $MERGEIT_LLM_MODEL or the default; the structured-output
    form; the sampling parameters); the merge gate (None: off) with its thresholds and the
    quality gate; the embedding model its backend records; and the settings fixed in code: the
    prompt versions and the code itself (mergeit_core and its SQL), so an upgrade recomputes.
    """
    shaping = {
        "pipeline": _without_how(pipeline, also={"sources"}),  # the files they resolve to are hashed
        "llm": _without_how(asdict(llm)),
        "model": model_identity(llm),
        "structured_output_form": llm.structured_output_form,
        "sampling_params": llm.sampling_params(),
        "quality_gate": quality_gate,
        "merge_gate": asdict(merge_gate) if merge_gate is not None else None,
        "embedding_model": embed.model_id(str(pipeline.get("embedding_backend", embed.DEFAULT_BACKEND))),
        "prompt_version": PROMPT_VERSION,
        "score_prompt_version": SCORE_PROMPT_VERSION,
        "code": code_hash(),
    }
    return RunInputs(sources_hash(sources), stable_hash(shaping, length=64))


def sources_hash(sources: Sequence[str | Path]) -> str:
    """Every source file's bytes (by path), and the paths met in source folders that are not read."""
    scan = scan_source_paths(sources)
    files = [(str(path), file_sha256(path)) for path in scan.files]
    unread = [(entry.source_file, entry.status, entry.reason) for entry in scan.skipped]
    return stable_hash([files, unread], length=64)


def invocation_hash(flags: Mapping[str, object], environ: Mapping[str, str]) -> str:
    """What a `mergeit run` was asked, as given: its flags, the MERGEIT_* variables (less any that
    may hold a secret, and the one named by $MERGEIT_LLM_API_KEY_ENV), the code of mergeit_core,
    mergeit_assets and the SQL (defaults live there), and the models folder's listing (a bare
    model name resolves to a file there). Equal hashes resolve to equal settings; unequal ones
    prove nothing, and the full check compares the resolved settings."""
    variables = settings.setting_variables(environ)
    package_root = Path(__file__).resolve().parent
    code = code_hash((package_root, package_root.parent / "mergeit_assets", sql_dir()))
    return stable_hash(
        [json.loads(json.dumps(dict(flags), default=str)), sorted(variables.items()), code, _listing(models.models_dir())],
        length=64,
    )


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    if not folder.is_dir():
        return []
    stats = {entry.name: entry.stat() for entry in folder.iterdir()}
    return sorted((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats.items())


def repeated_complete_run(db_path: str | Path, sources: Sequence[str | Path], invocation: str) -> CompleteRun | None:
    """The recorded complete run that this invocation repeats exactly (same invocation hash, same
    source bytes, database untouched since), or None: then the full check decides."""
    if not Path(db_path).is_file():
        return None
    previous = last_complete_run(db_path)
    if previous is None or previous.invocation_hash != invocation:
        return None
    if sources_hash(sources) != previous.sources_hash or not untouched_since(db_path, previous):
        return None
    return previous


def code_hash(roots: Sequence[Path] | None = None) -> str:
    """The bytes of every Python and SQL file under ``roots`` (default: mergeit_core and its SQL
    folder), by relative path."""
    digest = hashlib.sha256()
    for root in roots or (Path(__file__).resolve().parent, sql_dir()):
        for path in sorted([*root.rglob("*.py"), *root.rglob("*.sql")]):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _without_how(settings: Mapping[str, object], also: Iterable[str] = ()) -> dict[str, object]:
    left_out = HOW_NOT_WHAT.union(also)
    return {name: value for name, value in settings.items() if name not in left_out}


def database_stamp(db_path: str | Path) -> str:
    with connect(db_path) as conn:
        values = run_sql(conn, "pipeline/database_stamp.sql").fetchall()[0]
    return stable_hash([str(value) for value in values], length=64)


def last_complete_run(db_path: str | Path) -> CompleteRun | None:
    with connect(db_path) as conn:
        rows = run_sql(conn, "pipeline/last_complete_run.sql").fetchall()
    return CompleteRun(*rows[0]) if rows else None


def untouched_since(db_path: str | Path, run: CompleteRun | None) -> bool:
    """Whether nothing has written to the database since ``run`` recorded it."""
    return run is not None and database_stamp(db_path) == run.database_stamp


def record_complete_run(
    db_path: str | Path, run_id: str, inputs: RunInputs, finished_at: datetime, invocation: str | None = None
) -> bool:
    """Record the run just finished, unless a rerun would still ask the LLM for something (a
    failed merge without a cached answer): then the next run must not be skipped."""
    with connect(db_path) as conn:
        [(retryable,)] = run_sql(conn, "pipeline/retryable_failures.sql").fetchall()
        run_sql(conn, "pipeline/forget_complete_run.sql")
    if retryable:
        return False
    stamp = database_stamp(db_path)  # after the DELETE: complete_runs is not part of the stamp
    with connect(db_path) as conn:
        run_sql(conn, "pipeline/record_complete_run.sql", {
            "run_id": run_id, "sources_hash": inputs.sources_hash, "settings_hash": inputs.settings_hash,
            "database_stamp": stamp, "finished_at": finished_at, "invocation_hash": invocation,
        })
    return True


def remember_invocation(db_path: str | Path, invocation: str) -> None:
    """After the full check found nothing changed: the next identical invocation proves it fast."""
    with connect(db_path) as conn:
        run_sql(conn, "pipeline/remember_invocation.sql", {"invocation_hash": invocation})
