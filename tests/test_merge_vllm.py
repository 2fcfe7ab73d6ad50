"""vLLM for real: its offline engine, and `vllm serve` spoken to by the ``openai`` backend, both
with the bundled SmolLM2 converted to a Hugging Face folder and the merge schema enforced.

The tests marked ``vllm`` need the venv bench/vllm_cpu/setup.sh builds (vLLM's CPU build; a venv
with a GPU build works alike) and skip, saying why, without it:

    MERGEIT_VLLM_PYTHON     that venv's python
    MERGEIT_VLLM_MODEL_DIR  the converted model (default ~/.cache/mergeit/hf-models/<GGUF name>)

The main Python has no vLLM: the offline engine runs in the venv's python as a subprocess, with
PYTHONPATH at this repository, and the server is started from it too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import duckdb
import httpx
import pytest
from support import bundled_rows

from mergeit_assets.resources import LLMResource
from mergeit_core.embed import embed_texts
from mergeit_core.merge.backends import open_backend
from mergeit_core.merge.cache import DuckDBResponseCache
from mergeit_core.merge.engine import MergeGroup, MergeReport, run_merges
from mergeit_core.merge.llama_server import descendant_pids
from mergeit_core.merge.llm import LLMConfig
from mergeit_core.merge.prompt import MERGED_SAMPLE_SCHEMA, parse_merged_sample
from mergeit_core.merge.vllm_backend import CPU_KV_CACHE_BYTES, engine_arguments
from mergeit_core.merge.vllm_server import VLLMServer, converted_model_dir, missing_vllm_setup
from mergeit_core.pairing import cosine_similarity_matrix, similarity_groups
from mergeit_core.records import Sample

REPO_ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = os.environ.get("MERGEIT_VLLM_PYTHON", "")
MAX_TOKENS = 384
GROUPS = 4
KEY_ENV = "MERGEIT_TEST_VLLM_KEY"  # the local server checks no key; the client wants one
MODEL_DIR = converted_model_dir()
MISSING = missing_vllm_setup(VLLM_PYTHON, MODEL_DIR)
needs_vllm = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


# --- engine settings: the same for the offline engine and the server ---------------------------


def test_cpu_defaults_bound_the_kv_cache_and_run_eager() -> None:
    config = LLMConfig(backend="vllm", model="/models/m")

    on_cpu = engine_arguments(config, on_cpu=True)
    on_gpu = engine_arguments(config, on_cpu=False)

    assert on_cpu["kv_cache_memory_bytes"] == CPU_KV_CACHE_BYTES and on_cpu["enforce_eager"] is True
    assert "kv_cache_memory_bytes" not in on_gpu and on_gpu["enforce_eager"] is False
    for arguments in (on_cpu, on_gpu):
        assert arguments["structured_outputs_config"] == {"backend": "xgrammar", "disable_any_whitespace": True}
        assert (arguments["model"], arguments["dtype"], arguments["max_model_len"]) == ("/models/m", "auto", 4096)


def test_explicit_engine_settings_win_on_either_build() -> None:
    config = LLMConfig(
        backend="vllm", model="m", vllm_kv_cache_bytes=3 << 30, vllm_enforce_eager=False,
        vllm_structured_output_backend="guidance", vllm_disable_any_whitespace=False,
        vllm_dtype="float32", vllm_max_model_len=2048,
    )

    for on_cpu in (True, False):
        arguments = engine_arguments(config, on_cpu=on_cpu)
        assert arguments["kv_cache_memory_bytes"] == 3 << 30 and arguments["enforce_eager"] is False
        assert arguments["structured_outputs_config"] == {"backend": "guidance", "disable_any_whitespace": False}
        assert (arguments["dtype"], arguments["max_model_len"]) == ("float32", 2048)


VLLM_ENVIRONMENT = {
    "MERGEIT_VLLM_KV_CACHE_BYTES": "536870912",
    "MERGEIT_VLLM_STRUCTURED_OUTPUT_BACKEND": "guidance",
    "MERGEIT_VLLM_DISABLE_ANY_WHITESPACE": "false",
    "MERGEIT_VLLM_ENFORCE_EAGER": "yes",
    "MERGEIT_VLLM_DTYPE": "bfloat16",
    "MERGEIT_VLLM_MAX_MODEL_LEN": "2048",
}


def test_engine_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in VLLM_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)

    config = LLMResource.from_env().to_config()

    assert (config.vllm_kv_cache_bytes, config.vllm_structured_output_backend) == (1 << 29, "guidance")
    assert (config.vllm_disable_any_whitespace, config.vllm_enforce_eager) == (False, True)
    assert (config.vllm_dtype, config.vllm_max_model_len) == ("bfloat16", 2048)


def test_without_environment_the_engine_settings_are_the_platform_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VLLM_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    fields = [name for name in LLMConfig.__dataclass_fields__ if name.startswith("vllm_")]

    config = LLMResource.from_env().to_config()

    assert {name: getattr(config, name) for name in fields} == {name: getattr(LLMConfig(), name) for name in fields}


def test_a_malformed_switch_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERGEIT_VLLM_ENFORCE_EAGER", "sometimes")

    with pytest.raises(ValueError, match=r"MERGEIT_VLLM_ENFORCE_EAGER='sometimes'"):
        LLMResource.from_env()


def test_server_command_carries_the_engine_settings_and_binds_locally() -> None:
    server = VLLMServer(LLMConfig(backend="vllm", model="/models/m"), python="/venv/bin/python", on_cpu=True)
    server.port = 8123

    command = server._command()

    assert command[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    options = " ".join(command[3:])
    assert "--model /models/m --dtype auto --max-model-len 4096 --enforce-eager" in options
    assert f"--kv-cache-memory-bytes {CPU_KV_CACHE_BYTES}" in options
    assert '--structured-outputs-config {"backend": "xgrammar", "disable_any_whitespace": true}' in options
    assert options.endswith("--served-model-name local --host 127.0.0.1 --port 8123")


# --- the real engine ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_groups() -> list[MergeGroup]:
    """The first groups the pipeline's pairing forms among the bundled sample's first rows."""
    samples = [Sample.normalised(row["instruction"], row["input"], row["output"]) for row in bundled_rows()[:80]]
    similarity = cosine_similarity_matrix(embed_texts([sample.embedding_text for sample in samples]))
    groups = similarity_groups(similarity, threshold=0.55)[:GROUPS]
    assert len(groups) == GROUPS
    return [
        MergeGroup(f"g{number}", "sample", tuple(samples[member] for member in group.members))
        for number, group in enumerate(groups)
    ]


def check_answers_follow_the_schema(db_path: Path, answered: int, model: str) -> None:
    """Every answer the model finished is a JSON object with exactly the schema's string fields,
    and the valid ones are exactly the answers that parsed (kept or rejected by the gate)."""
    with duckdb.connect(str(db_path), read_only=True) as conn:
        rows = conn.execute("SELECT model, valid, response, completion_tokens FROM llm_cache").fetchall()
    assert rows and {row[0] for row in rows} == {model}
    for _, valid, response, completion_tokens in rows:
        if completion_tokens < MAX_TOKENS:  # a grammar does not stop a model at the cap
            answer = json.loads(response)
            assert set(answer) == set(MERGED_SAMPLE_SCHEMA["required"]), response
            assert all(isinstance(value, str) for value in answer.values()), response
        if valid:
            parse_merged_sample(response)
    assert sum(valid for _, valid, _, _ in rows) == answered


def still_running(pids: list[int], wait_s: float = 15.0) -> list[int]:
    """The pids not yet dead after ``wait_s`` (a killed process needs a moment; zombies count as dead)."""
    deadline = time.monotonic() + wait_s
    while True:
        running = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                running.append(pid)
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.5)


@pytest.mark.vllm
@pytest.mark.timeout(1800)  # vLLM's start-up alone is minutes on 2 busy cores
@needs_vllm
def test_offline_engine_merges_real_sample_groups_under_the_schema(
    sample_groups: list[MergeGroup], tmp_path: Path
) -> None:
    request = {
        "config": {"backend": "vllm", "model": str(MODEL_DIR), "max_tokens": MAX_TOKENS},
        "db": str(tmp_path / "offline.duckdb"),
        "groups": [
            {"group_id": g.group_id, "cluster_key": g.cluster_key, "members": [m.as_dict() for m in g.members]}
            for g in sample_groups
        ],
    }
    (tmp_path / "request.json").write_text(json.dumps(request))

    finished = subprocess.run(
        [VLLM_PYTHON, str(REPO_ROOT / "tests" / "vllm_offline_merge.py"), "request.json", "report.json"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "VLLM_ENGINE_READY_TIMEOUT_S": "1200"},
        capture_output=True, text=True, timeout=1500,
    )

    assert finished.returncode == 0, finished.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    outcomes = report["outcomes"]
    assert [outcome["group_id"] for outcome in outcomes] == [group.group_id for group in sample_groups]
    # Schema-valid answers, whether the merge gate keeps them (merged) or not (rejected).
    answered = [outcome for outcome in outcomes if outcome["status"] in ("merged", "rejected")]
    assert answered, [outcome["error"] for outcome in outcomes]
    for outcome in answered:
        assert parse_merged_sample(json.dumps(outcome["sample"])) == Sample(**outcome["sample"])
    check_answers_follow_the_schema(tmp_path / "offline.duckdb", len(answered), str(MODEL_DIR))
    merged = [outcome for outcome in outcomes if outcome["status"] == "merged"]
    print(f"offline engine: {len(merged)}/{len(outcomes)} merged, {report['requests']} requests")
    for outcome in outcomes:
        print(json.dumps(outcome)[:300])


@pytest.mark.vllm
@pytest.mark.timeout(1800)  # vLLM's start-up alone is minutes on 2 busy cores
@needs_vllm
def test_openai_backend_merges_through_a_real_vllm_server(
    sample_groups: list[MergeGroup], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "unused-by-a-local-server")
    served = LLMConfig(backend="vllm", model=str(MODEL_DIR))
    server = VLLMServer(served, python=VLLM_PYTHON, on_cpu=True)
    with server:
        workers = descendant_pids(server.pid)
        client = LLMConfig(
            backend="openai", model=server.model_alias, base_url=server.base_url, api_key_env=KEY_ENV,
            structured_output="json_schema", max_tokens=MAX_TOKENS, concurrency=4,
        )
        with open_backend(client) as backend:
            report: MergeReport = run_merges(
                sample_groups, backend, DuckDBResponseCache(tmp_path / "served.duckdb"), client
            )
        # vLLM's server speaks the standard strict json_schema form the backend sends.
        direct = httpx.post(
            f"{server.base_url}/chat/completions",
            json={
                "model": server.model_alias, "max_tokens": MAX_TOKENS,
                "messages": [{"role": "user", "content": "Describe a cat as a training sample."}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "response", "schema": MERGED_SAMPLE_SCHEMA, "strict": True},
                },
            },
            timeout=300,
        ).json()["choices"][0]
        port = server.port

    # Schema-valid answers, whether the merge gate keeps them (merged) or not (rejected).
    assert report.merged + report.rejected >= 1, [outcome.error for outcome in report.outcomes]
    assert report.merged + report.rejected + report.failed == len(sample_groups)
    check_answers_follow_the_schema(tmp_path / "served.duckdb", report.merged + report.rejected, "local")
    print(f"vllm serve: {report.merged}/{len(report.outcomes)} merged, {report.requests} requests; direct json_schema request: {direct['finish_reason']} {direct['message']['content'][:200]}")
    for outcome in report.outcomes:
        print(outcome.group_id, outcome.status, outcome.error, outcome.sample)
    if direct["finish_reason"] == "stop":
        assert set(json.loads(direct["message"]["content"])) == set(MERGED_SAMPLE_SCHEMA["required"])
    # Stopped surely: the port is closed and no engine process outlives the server.
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    assert workers and not still_running(workers)
