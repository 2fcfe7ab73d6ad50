"""The ONNX embedding backend: the torch model's vectors within a hair, exported once into a
cache that never serves a damaged file, loaded without torch, and chosen with
`mergeit run --embedding-backend` (or the environment) all the way to the embeddings table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from llm_support import Reply, ScriptedServer, concatenated_merge
from support import REPO_ROOT, bundled_rows, write_jsonl

from mergeit_core import embed, embed_onnx
from mergeit_core.records import Sample
from mergeit_core.settings import BUNDLED_SAMPLE
from mergeit_core.store import connect

LEAST_COSINE = 0.9999


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory):
    """One export for the module, in a folder of its own (never the user's cache)."""
    folder = tmp_path_factory.mktemp("onnx")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(embed_onnx.ONNX_DIR_ENV, str(folder))
        embed_onnx.load_encoder.cache_clear()
        embed._load.cache_clear()
        embed_onnx.model_path()
        yield folder
        embed_onnx.load_encoder.cache_clear()
        embed._load.cache_clear()


@pytest.fixture(scope="module")
def sample_texts() -> list[str]:
    return [Sample.normalised(r["instruction"], r.get("input", ""), "").embedding_text for r in bundled_rows()]


@pytest.fixture(scope="module")
def torch_vectors(sample_texts: list[str]) -> np.ndarray:
    return embed.embed_texts(sample_texts, backend="torch")


def test_onnx_vectors_match_the_torch_model_in_input_order(
    onnx_dir: Path, sample_texts: list[str], torch_vectors: np.ndarray
) -> None:
    vectors = embed.embed_texts(sample_texts, backend="onnx")
    assert vectors.shape == torch_vectors.shape and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = np.einsum("ij,ij->i", vectors, torch_vectors)
    assert cosine.min() >= LEAST_COSINE
    # Input order: each row is nearer its own torch vector than any other text's.
    assert (np.argmax(vectors @ torch_vectors.T, axis=1) == np.arange(len(vectors))).mean() > 0.99
    # The progress path slices the same batches and reports as it goes.
    done: list[int] = []
    with_progress = embed.embed_texts(sample_texts, backend="onnx", batch_size=16, on_progress=done.append)
    np.testing.assert_allclose(with_progress, vectors, atol=1e-4)
    assert done[-1] == len(sample_texts)


def test_without_a_batch_size_each_backend_encodes_at_its_own_and_the_vectors_do_not_depend_on_it(
    onnx_dir: Path, sample_texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: dict[str, list[int]] = {"onnx": [], "torch": []}
    load_model = embed.load_model

    def recording_load_model(device: str = "cpu", backend: str = embed.DEFAULT_BACKEND):
        encode = load_model(device, backend)

        def recording_encode(texts: list[str], batch_size: int) -> np.ndarray:
            asked[backend].append(batch_size)
            return encode(texts, batch_size)

        return recording_encode

    monkeypatch.setattr(embed, "load_model", recording_load_model)
    by_default = embed.embed_texts(sample_texts, backend="onnx")
    embed.embed_texts(sample_texts[:3], backend="torch")
    at_64 = embed.embed_texts(sample_texts, backend="onnx", batch_size=64)
    # Small batches on the CPU (onnx), GPU-sized ones for torch, unless one is asked for.
    assert asked == {"onnx": [1, 64], "torch": [64]}
    np.testing.assert_allclose(by_default, at_64, atol=1e-5)


def test_the_workers_encode_batches_side_by_side_and_return_the_rows_in_input_order(
    onnx_dir: Path, sample_texts: list[str], torch_vectors: np.ndarray
) -> None:
    model_dir = embed_onnx.model_files_dir()
    one, three = (
        embed_onnx.OnnxEncoder(embed_onnx.model_path(model_dir), model_dir / "tokenizer.json", workers=workers)
        for workers in (1, 3)
    )
    in_turn = one.encode(sample_texts, 2)
    side_by_side = three.encode(sample_texts, 2)
    # The same batches through the same single-core session runs: the same vectors, bit for bit.
    np.testing.assert_array_equal(side_by_side, in_turn)
    assert np.einsum("ij,ij->i", side_by_side, torch_vectors).min() >= LEAST_COSINE
    # A batch that fails fails the call, not silently leaves its rows unset.
    three.tokenizer = None
    with pytest.raises(AttributeError):
        three.encode(sample_texts[:5], 1)


def test_long_texts_are_truncated_at_256_tokens_as_sentence_transformers_does(onnx_dir: Path) -> None:
    long_text = " ".join(f"word{i} is a token or three" for i in range(400))
    texts = [long_text, long_text + " and then some more words past the cut", "a short text"]
    vectors = embed.embed_texts(texts, backend="onnx")
    reference = embed.embed_texts(texts, backend="torch")
    assert np.einsum("ij,ij->i", vectors, reference).min() >= LEAST_COSINE
    # Both long texts share their first 256 tokens: the same vector.
    assert float(vectors[0] @ vectors[1]) > 0.9999


def test_empty_input_and_unknown_backends(onnx_dir: Path) -> None:
    assert embed.embed_texts([], backend="onnx").shape == (0, embed.EMBEDDING_DIM)
    with pytest.raises(ValueError, match="embedding backend must be one of"):
        embed.embed_texts([], backend="tensorflow")
    with pytest.raises(ValueError, match="runs on the CPU"):
        embed.load_model("cuda", "onnx")


def test_each_backend_records_its_own_model() -> None:
    assert embed.model_id("torch") == embed.MODEL_NAME == "sentence-transformers/all-MiniLM-L6-v2"
    assert embed.model_id() == embed.model_id("onnx") == f"{embed.MODEL_NAME}@onnx"


def test_the_export_is_made_once_and_a_damaged_file_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, onnx_dir: Path
) -> None:
    monkeypatch.setenv(embed_onnx.ONNX_DIR_ENV, str(tmp_path))
    exports: list[Path] = []
    real_export = embed_onnx._export
    monkeypatch.setattr(embed_onnx, "_export", lambda model_dir, target: (exports.append(target), real_export(model_dir, target)))
    model_dir = embed_onnx.model_files_dir()
    first = embed_onnx.model_path(model_dir)
    assert embed_onnx.model_path(model_dir) == first and first.is_relative_to(tmp_path)
    assert len(exports) == 1
    sound = first.read_bytes()
    first.write_bytes(sound[: len(sound) // 2])  # a file cut short, as by a crash mid-copy
    assert embed_onnx.model_path(model_dir) == first
    assert len(exports) == 2 and first.read_bytes() == sound
    # Nothing half-written is left beside the model.
    assert sorted(p.name for p in first.parent.iterdir()) == [".lock", "model.onnx", "model.onnx.sha256"]


def test_an_exported_model_loads_without_torch(onnx_dir: Path) -> None:
    probe = (
        "import sys, json\n"
        "from mergeit_core import embed\n"
        "vectors = embed.embed_texts(['Name three colours.', 'Translate to French: good morning'])\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules)\n"
        "print(json.dumps({'shape': list(vectors.shape), 'heavy': heavy}))\n"
    )
    env = {**os.environ, embed_onnx.ONNX_DIR_ENV: str(onnx_dir), "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {"shape": [2, embed.EMBEDDING_DIM], "heavy": []}


# --- through the command --------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`mergeit` from this checkout (the installed command may point at another one)."""
    return subprocess.run(
        [sys.executable, "-m", "mergeit_assets.cli", *args], cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
        capture_output=True, text=True, timeout=900, start_new_session=True,
    )


def scripted_answer(index: int, body: dict) -> Reply:
    return concatenated_merge(index, body)


def embedding_models(db: Path) -> dict[str, int]:
    with connect(db, read_only=True) as conn:
        return dict(conn.execute("SELECT model, count(*) FROM instruction_embeddings GROUP BY model").fetchall())


def test_the_flag_and_the_environment_choose_the_backend_of_the_run(onnx_dir: Path, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "rows.jsonl", bundled_rows()[:40])
    env = {
        embed_onnx.ONNX_DIR_ENV: str(onnx_dir), "MERGEIT_SOURCES": str(BUNDLED_SAMPLE),
        "MERGEIT_EMBEDDING_BACKEND": "torch", "OPENAI_API_KEY": "unused",
    }
    with ScriptedServer(scripted_answer) as server:
        argv = ("run", str(source), "--db", "runs.duckdb", "--llm", "openai", "--model", "stub",
                "--base-url", server.base_url, "--budget", "8")
        flagged = run_cli(*argv, "--embedding-backend", "onnx", cwd=tmp_path, env=env)
        assert flagged.returncode == 0, flagged.stderr[-4000:]
        assert embedding_models(tmp_path / "runs.duckdb") == {f"{embed.MODEL_NAME}@onnx": 40}
        # No flag: the environment's backend. A new backend is a new setting: the run is not
        # skipped, and its rows are embedded again rather than mixed with the onnx vectors.
        from_env = run_cli(*argv, cwd=tmp_path, env=env)
    assert from_env.returncode == 0, from_env.stderr[-4000:]
    assert "nothing changed" not in from_env.stdout
    assert embedding_models(tmp_path / "runs.duckdb") == {f"{embed.MODEL_NAME}@onnx": 40, embed.MODEL_NAME: 40}
    with connect(tmp_path / "runs.duckdb", read_only=True) as conn:
        [(selected,)] = conn.execute("SELECT count(*) FROM selected_subset").fetchall()
    assert selected > 0


def test_an_unknown_backend_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from_flag = run_cli("run", "--embedding-backend", "tensorflow", cwd=tmp_path, env={})
    assert from_flag.returncode == 2 and "invalid choice: 'tensorflow'" in from_flag.stderr
    from_env = run_cli("run", cwd=tmp_path, env={"MERGEIT_EMBEDDING_BACKEND": "tensorflow"})
    assert from_env.returncode == 2
    assert "--embedding-backend: embedding backend must be one of onnx, torch" in from_env.stderr
    assert not (tmp_path / "mergeit.duckdb").exists()
