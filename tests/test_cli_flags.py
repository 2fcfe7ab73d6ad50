"""Every `mergeit run` flag reaches the assets: checked in the run's tables and on the LLM
endpoint, through the installed command as a user runs it. Bad values are refused up front."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from llm_support import Reply, ScriptedServer, concatenated_merge
from support import bundled_rows, printed_command, run_mergeit, write_jsonl

from mergeit_assets import cli
from mergeit_core.settings import BUNDLED_SAMPLE
from mergeit_core.store import connect

MODEL = "stub-model"


def scripted_answer(index: int, body: dict[str, Any]) -> Reply:
    """Genuine merges and judge scores, slow enough for requests to overlap."""
    return concatenated_merge(index, body, delay_s=0.2)


def rows(db: Path, sql: str) -> list[tuple]:
    with connect(db, read_only=True) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One file and one folder of two files: 90 real rows."""
    folder = tmp_path_factory.mktemp("sources")
    data = bundled_rows()[:90]
    single = write_jsonl(folder / "single.jsonl", data[:30])
    write_jsonl(folder / "more" / "a.jsonl", data[30:60])
    write_jsonl(folder / "more" / "b.jsonl", data[60:])
    return single, folder / "more"


@pytest.fixture(scope="module")
def flagged_run(sources: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """Every flag given, and the environment saying otherwise: the flags must win."""
    workdir = tmp_path_factory.mktemp("flags")
    single, folder = sources
    contrary_env = {
        "MERGEIT_SOURCES": str(BUNDLED_SAMPLE), "MERGEIT_BUDGET": "70", "MERGEIT_THRESHOLD": "0.9",
        "MERGEIT_MAX_GROUP_SIZE": "2", "MERGEIT_LLM_BACKEND": "llama_cpp", "MERGEIT_LLM_MODEL": "",
        "MERGEIT_LLM_CONCURRENCY": "8", "MERGEIT_LLM_STRUCTURED_OUTPUT": "json_schema", "OPENAI_API_KEY": "unused",
    }
    argv = (
        "run", str(single), str(folder), "--db", "flags.duckdb",
        "--llm", "openai", "--model", MODEL,
        "--structured-output", "json_object_schema", "--concurrency", "3",
        "--budget", "12", "--threshold", "0.35", "--max-group-size", "3", "--quality-gate",
    )
    with ScriptedServer(scripted_answer) as server:
        result = run_mergeit(*argv, "--base-url", server.base_url, cwd=workdir, env=contrary_env)
        requests = [r.body for r in server.requests]
        max_in_flight = server.max_in_flight
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir / "flags.duckdb", result, requests, max_in_flight, (argv, server.base_url, contrary_env)


def imported_modules(result) -> set[str]:
    """The modules a command run with PYTHONPROFILEIMPORTTIME=1 imported (its stderr lists them)."""
    return {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


def test_the_same_command_again_proves_nothing_changed_and_reruns_nothing(flagged_run) -> None:
    db, first, _, _, (argv, base_url, env) = flagged_run
    dataset = rows(db, "SELECT sample_id, instruction FROM merged_dataset ORDER BY ALL")
    # The endpoint is gone: any request would fail the run.
    again = run_mergeit(*argv, "--base-url", base_url, cwd=db.parent, env={**env, "PYTHONPROFILEIMPORTTIME": "1"})
    assert again.returncode == 0, again.stderr[-4000:]
    assert "nothing changed since run" in again.stdout, again.stdout
    assert rows(db, "SELECT sample_id, instruction FROM merged_dataset ORDER BY ALL") == dataset
    final = re.compile(r"final rows (\d+)")
    assert final.search(again.stdout).group(1) == final.search(first.stdout).group(1)
    # Proven from the recorded invocation alone: neither Dagster nor the embedding model loaded.
    modules = imported_modules(again)
    assert "mergeit_core.fingerprint" in modules
    assert not modules & {"dagster", "torch", "sentence_transformers", "sklearn", "openai"}


def test_the_same_settings_asked_otherwise_are_proven_unchanged_the_long_way_then_fast(flagged_run) -> None:
    db, _, _, _, (argv, base_url, env) = flagged_run
    # Concurrency changes how fast, not what: the resolved settings match, but not the invocation.
    otherwise = [*argv[:argv.index("--concurrency")], "--concurrency", "2", *argv[argv.index("--concurrency") + 2:]]
    profiled = {**env, "PYTHONPROFILEIMPORTTIME": "1"}
    long_way = run_mergeit(*otherwise, "--base-url", base_url, cwd=db.parent, env=profiled)
    assert long_way.returncode == 0, long_way.stderr[-4000:]
    assert "nothing changed since run" in long_way.stdout, long_way.stdout
    assert "dagster" in imported_modules(long_way)
    fast = run_mergeit(*otherwise, "--base-url", base_url, cwd=db.parent, env=profiled)
    assert "nothing changed since run" in fast.stdout, fast.stdout
    assert "dagster" not in imported_modules(fast)


def test_the_printed_dagster_dev_command_resolves_the_settings_this_run_used(
    flagged_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dagster dev` sees settings only through MERGEIT_* variables: the ones the summary prints
    must build the resources the flags built, or its sensors would redo the run otherwise."""
    db, result, _, _, (argv, base_url, contrary_env) = flagged_run

    def resources_under(environment: dict[str, str], args: list[str]) -> dict:
        for name in [name for name in os.environ if name.startswith("MERGEIT_")]:
            monkeypatch.delenv(name)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        return cli._resources(cli.build_parser().parse_args(["run", *args]))

    asked = resources_under(contrary_env, [*argv[1:], "--base-url", base_url])
    environment, command = printed_command(result.stdout)
    assert command == ["dagster", "dev", "-m", "mergeit_assets.definitions"]
    seen = resources_under(environment, [])
    assert seen["pipeline"].model_dump() == asked["pipeline"].model_dump()
    assert seen["llm"].model_dump() == asked["llm"].model_dump()
    assert seen["duckdb"].database == str(db)


def test_sources_flags_replace_the_bundled_sample(flagged_run, sources) -> None:
    db, result, *_ = flagged_run
    single, folder = sources
    files = {f for (f,) in rows(db, "SELECT source_file FROM source_files")}
    assert files == {str(single), str(folder / "a.jsonl"), str(folder / "b.jsonl")}
    assert "rows read 90 / accepted 90" in result.stdout


def test_budget_bounds_every_cluster_selection(flagged_run) -> None:
    db, *_ = flagged_run
    per_cluster = rows(db, "SELECT cluster_key, count(*) FROM selected_subset GROUP BY ALL")
    sizes = dict(rows(db, "SELECT cluster_key, size FROM clusters"))
    assert per_cluster and all(n == min(12, sizes[key]) for key, n in per_cluster)
    assert max(sizes.values()) > 12  # the budget, not the cluster, set the bound


def test_threshold_and_group_size_shape_the_merge_groups(flagged_run) -> None:
    db, *_ = flagged_run
    [(lowest, largest, groups)] = rows(db, """
        SELECT min(similarity), max(members), count(*) FROM (
            SELECT group_id, min(similarity) AS similarity, count(*) AS members FROM merge_pairs GROUP BY group_id)""")
    assert groups > 0 and lowest > 0.35
    assert largest == 3  # --max-group-size 3 allowed a group of three, and none larger


def test_llm_flags_reach_the_endpoint_and_the_provenance(flagged_run) -> None:
    db, _, requests, max_in_flight, _ = flagged_run
    assert requests and {body["model"] for body in requests} == {MODEL}
    # --structured-output json_object_schema: llama.cpp's form, not the OpenAI json_schema form
    assert {body["response_format"]["type"] for body in requests} == {"json_object"}
    # --concurrency 3: reached, never exceeded
    assert max_in_flight == 3
    assert set(rows(db, "SELECT DISTINCT backend, model FROM merged_samples")) == {("openai", MODEL)}
    # --quality-gate: the judge was asked, and its scores are on the rows
    judged = [b for b in requests if "score" in json.dumps(b["response_format"])]
    # (a merge the model-free gate rejects never reaches the judge)
    [(scored, gated_in)] = rows(db, "SELECT count(quality_score), "
                                    "count(*) FILTER (WHERE status IN ('merged', 'rejected_by_quality')) FROM merged_samples")
    assert judged and scored == gated_in > 0


def test_the_environment_is_the_default_when_no_flag_is_given(sources, tmp_path: Path) -> None:
    single, _ = sources
    with ScriptedServer(scripted_answer) as server:
        result = run_mergeit("run", cwd=tmp_path, env={
            "MERGEIT_SOURCES": str(single), "MERGEIT_DB": str(tmp_path / "env.duckdb"), "MERGEIT_BUDGET": "4",
            "MERGEIT_LLM_BACKEND": "openai", "MERGEIT_LLM_BASE_URL": server.base_url,
            "MERGEIT_LLM_MODEL": "env-model", "OPENAI_API_KEY": "unused",
        })
        models = {r.body["model"] for r in server.requests}
    assert result.returncode == 0, result.stderr[-4000:]
    db = tmp_path / "env.duckdb"
    assert rows(db, "SELECT source_file FROM source_files") == [(str(single),)]
    assert rows(db, "SELECT max(n) FROM (SELECT count(*) AS n FROM selected_subset GROUP BY cluster_key)") == [(4,)]
    assert models <= {"env-model"} and set(rows(db, "SELECT DISTINCT model FROM merged_samples")) <= {("env-model",)}


REFUSED = {
    "missing source": (["run", "no/such/folder"], "source path does not exist"),
    "zero budget": (["run", "--budget", "0"], "--budget: budget must be at least 1"),
    "negative budget": (["run", "--budget", "-3"], "--budget: budget must be at least 1"),
    "zero threshold": (["run", "--threshold", "0"], "--threshold: threshold is a cosine similarity in (0, 1]"),
    "threshold above one": (["run", "--threshold", "1.5"], "--threshold: threshold is a cosine similarity in (0, 1]"),
    "group of one": (["run", "--max-group-size", "1"], "--max-group-size: max group size must be at least 2"),
    "no concurrency": (["run", "--concurrency", "0"], "concurrency must be positive"),
    "base URL without openai": (["run", "--base-url", "http://127.0.0.1:9/v1"], "a base URL is for the openai backend"),
    "unknown llama model": (["run", "--model", "stub"], "model 'stub' is neither a known model name"),
    "missing gguf": (["run", "--model", "nowhere/model.gguf"], "is neither a known model name"),
    "bad environment number": (["run"], "MERGEIT_BUDGET='lots' is not a whole number"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_bad_values_are_refused_before_anything_runs(case: str, tmp_path: Path) -> None:
    argv, message = REFUSED[case]
    env = {"MERGEIT_LLM_BACKEND": "llama_cpp", "MERGEIT_LLM_BASE_URL": "", "MERGEIT_LLM_MODEL": ""}
    if case == "bad environment number":
        env["MERGEIT_BUDGET"] = "lots"
    result = run_mergeit(*argv, "--db", "refused.duckdb", cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("mergeit run: error: ") and message in line, line
    assert list(tmp_path.iterdir()) == []  # no database, no Dagster instance


def test_lineage_and_export_errors_are_one_line(tmp_path: Path) -> None:
    missing = run_mergeit("export", "out.jsonl", "--db", "none.duckdb", cwd=tmp_path, timeout=120)
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "no database at" in missing.stderr and not (tmp_path / "none.duckdb").exists()
    lineage = run_mergeit("lineage", "m123", "--db", "none.duckdb", cwd=tmp_path, timeout=120)
    assert lineage.returncode == 2 and "no database at" in lineage.stderr and "Traceback" not in lineage.stderr


def test_export_to_an_unknown_format_is_one_line(flagged_run) -> None:
    db, *_ = flagged_run
    result = run_mergeit("export", "out.csv", "--db", str(db), cwd=db.parent, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "mergeit export: error: cannot export to out.csv: the file name must end in .jsonl or .parquet"
