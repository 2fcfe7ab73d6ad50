"""The rerun fingerprint covers every setting that shapes results, and only those."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from pathlib import Path

import pytest
from support import bundled_rows, write_jsonl

from mergeit_assets import pipeline
from mergeit_assets.resources import LLMResource, MergeitDuckDB, PipelineSettings
from mergeit_core import fingerprint
from mergeit_core.merge.gate import GateThresholds
from mergeit_core.store import connect

LLM_BASE = {"backend": "openai", "model": "scripted", "base_url": "http://127.0.0.1:9/v1"}

# One other value per setting that changes what a run computes...
SHAPING_LLM = {
    "backend": ("llama_cpp", {"model": "smollm2", "base_url": None}),
    "model": ("another", {}),
    "base_url": ("http://127.0.0.1:10/v1", {}),
    "api_key_env": ("OTHER_KEY", {}),
    "temperature": (0.7, {}),
    "max_tokens": (300, {}),
    "quality_gate": (True, {}),
    "merge_gate": (False, {}),
    "structured_output": ("json_object_schema", {}),
    "vllm_structured_output_backend": ("guidance", {}),
    "vllm_disable_any_whitespace": (False, {}),
    "vllm_enforce_eager": (True, {}),
    "vllm_dtype": ("float16", {}),
    "vllm_max_model_len": (2048, {}),
    **{f"gate_{f.name}": (f.default + 0.01, {}) for f in fields(GateThresholds)},
}
SHAPING_PIPELINE = {
    "selection_budget": 20, "similarity_threshold": 0.6, "max_group_size": 3, "kmeans_seed": 7,
    "embedding_backend": "torch",
}
# ...and per setting that only changes how fast.
SPEED_LLM = {"concurrency": 2, "servers": 3, "request_timeout_s": 5.0, "max_retries": 1, "vllm_kv_cache_bytes": 2**30}
SPEED_PIPELINE = {"embed_batch_size": 16}


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "sources" / "part1.jsonl", bundled_rows()[:20])
    return tmp_path / "sources"


def inputs(sources: Path, llm: dict | None = None, settings: dict | None = None) -> fingerprint.RunInputs:
    return pipeline.run_inputs({
        "duckdb": MergeitDuckDB(database=str(sources.parent / "m.duckdb")),
        "pipeline": PipelineSettings(sources=[str(sources)], **(settings or {})),
        "llm": LLMResource(**{**LLM_BASE, **(llm or {})}),
    })


def test_every_setting_is_either_result_shaping_or_speed_only() -> None:
    assert set(LLMResource.model_fields) == set(SHAPING_LLM) | set(SPEED_LLM)
    assert set(PipelineSettings.model_fields) == set(SHAPING_PIPELINE) | set(SPEED_PIPELINE) | {"sources"}


@pytest.mark.parametrize("name", sorted(SHAPING_LLM))
def test_a_result_shaping_llm_setting_changes_the_fingerprint(sources: Path, name: str) -> None:
    value, alongside = SHAPING_LLM[name]
    changed = inputs(sources, {name: value, **alongside})
    assert changed.settings_hash != inputs(sources).settings_hash
    assert changed.sources_hash == inputs(sources).sources_hash


@pytest.mark.parametrize("name", sorted(SHAPING_PIPELINE))
def test_a_result_shaping_pipeline_setting_changes_the_fingerprint(sources: Path, name: str) -> None:
    assert inputs(sources, settings={name: SHAPING_PIPELINE[name]}).settings_hash != inputs(sources).settings_hash


def test_speed_only_settings_leave_the_fingerprint(sources: Path) -> None:
    assert inputs(sources, SPEED_LLM, SPEED_PIPELINE) == inputs(sources)


def test_gate_thresholds_do_not_count_while_the_gate_is_off(sources: Path) -> None:
    off = inputs(sources, {"merge_gate": False})
    assert inputs(sources, {"merge_gate": False, "gate_min_output_ratio": 0.1}) == off


def test_the_model_an_empty_setting_resolves_to_counts(sources: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    embedded = {"backend": "llama_cpp", "model": "", "base_url": None}
    monkeypatch.setenv("MERGEIT_LLM_MODEL", "smollm2")
    smollm2 = inputs(sources, embedded)
    monkeypatch.setenv("MERGEIT_LLM_MODEL", "qwen2.5-0.5b")
    assert inputs(sources, embedded).settings_hash != smollm2.settings_hash


def test_source_bytes_and_unread_files_change_the_sources_hash(sources: Path) -> None:
    before = inputs(sources)
    (sources / "notes.txt").write_text("not a source", encoding="utf-8")
    with_notes = inputs(sources)
    assert with_notes.sources_hash != before.sources_hash
    write_jsonl(sources / "part1.jsonl", bundled_rows()[1:21])
    assert inputs(sources).sources_hash not in (before.sources_hash, with_notes.sources_hash)
    assert inputs(sources).settings_hash == before.settings_hash


def test_a_change_to_the_code_changes_the_code_hash(tmp_path: Path) -> None:
    package, sql = tmp_path / "package", tmp_path / "sql"
    (package / "merge").mkdir(parents=True)
    sql.mkdir()
    (package / "merge" / "gate.py").write_text("THRESHOLD = 0.2\n", encoding="utf-8")
    (sql / "schema.sql").write_text("SELECT 1;\n", encoding="utf-8")
    before = fingerprint.code_hash([package, sql])
    (package / "merge" / "gate.py").write_text("THRESHOLD = 0.3\n", encoding="utf-8")
    after_code = fingerprint.code_hash([package, sql])
    (sql / "schema.sql").write_text("SELECT 2;\n", encoding="utf-8")
    assert len({before, after_code, fingerprint.code_hash([package, sql])}) == 3


def test_the_code_counts_among_the_settings(sources: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = inputs(sources)
    monkeypatch.setattr(fingerprint, "code_hash", lambda: "another version of mergeit")
    assert inputs(sources).settings_hash != before.settings_hash


def test_the_invocation_hash_covers_flags_variables_and_models_but_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MERGEIT_MODELS_DIR", str(tmp_path / "models"))
    flags = {"budget": 12, "sources": ["/data/a.jsonl"]}
    environ = {
        "MERGEIT_BUDGET": "20", "MERGEIT_LLM_API_KEY_ENV": "MERGEIT_BENCH_KEY", "MERGEIT_BENCH_KEY": "secret-1",
        "MERGEIT_HUB_TOKEN": "token-1", "HOME": "/home/a",
    }
    asked = fingerprint.invocation_hash(flags, environ)
    # Secrets (by name, and the variable the API key is read from) and other variables do not count...
    assert fingerprint.invocation_hash(
        flags, {**environ, "MERGEIT_BENCH_KEY": "secret-2", "MERGEIT_HUB_TOKEN": "token-2", "HOME": "/home/b"}
    ) == asked
    # ...flags, MERGEIT_* variables, the key's variable name and the models folder's files do.
    assert fingerprint.invocation_hash({**flags, "budget": 13}, environ) != asked
    assert fingerprint.invocation_hash(flags, {**environ, "MERGEIT_BUDGET": "21"}) != asked
    assert fingerprint.invocation_hash(flags, {**environ, "MERGEIT_LLM_API_KEY_ENV": "OTHER"}) != asked
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.gguf").write_bytes(b"GGUF")
    assert fingerprint.invocation_hash(flags, environ) != asked


def test_a_recorded_invocation_repeats_only_on_the_same_source_bytes(sources: Path) -> None:
    db = sources.parent / "m.duckdb"
    assert fingerprint.repeated_complete_run(db, [sources], "asked") is None  # no database yet
    with connect(db):
        pass
    recorded = fingerprint.RunInputs(fingerprint.sources_hash([sources]), "settings")
    assert fingerprint.record_complete_run(db, "run-1", recorded, datetime(2026, 11, 29), "asked")
    assert fingerprint.repeated_complete_run(db, [sources], "asked").run_id == "run-1"
    assert fingerprint.repeated_complete_run(db, [sources], "asked otherwise") is None
    write_jsonl(sources / "part1.jsonl", bundled_rows()[1:21])
    assert fingerprint.repeated_complete_run(db, [sources], "asked") is None
