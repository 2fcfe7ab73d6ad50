"""The embedding backends against the paper's torch model, with ratios measured in this one run
(issue 11 goal 5: >= 2x the torch encode, cosine >= 0.99, >= 95% of the same rows selected).

The rows are those `mergeit run` embeds from the source (its own ingest: accepted, deduplicated).
Each backend loads and encodes in a fresh process (the load includes its imports; peak RSS is
the process's VmHWM), the same texts, once, each at its own default batch size (the pipeline's:
onnx 1 on a worker per CPU, torch 64, sentence-transformers' plain encode) unless --batch-size sets one; the ONNX export is made
beforehand, untimed. Then, on each backend's vectors, the pipeline's own clustering (PCA 95%,
KMeans seed 42) and facility-location selection per cluster with the default budget: overlap is
|selected ∩ selected by torch| / |selected by torch|.

    python bench/bench_embedding.py [--source ../shared/data/mergeit-6k.json] [--batch-size N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mergeit_core import embed
from mergeit_core.cluster import fit_clusters
from mergeit_core.ingest import ingest_sources
from mergeit_core.select import DEFAULT_BUDGET, select_facility_location

# ../shared beside the repository (the main checkout), or beside the worktrees' parent.
DEFAULT_SOURCE = next(
    (p for p in (Path(__file__).resolve().parents[n] / "shared" / "data" / "mergeit-6k.json" for n in (2, 3)) if p.is_file()),
    Path(__file__).resolve().parents[2] / "shared" / "data" / "mergeit-6k.json",
)

ENCODE_ONE_BACKEND = """
import json, sys, time
import numpy as np
started = time.perf_counter()
from mergeit_core import embed
texts = json.load(open(sys.argv[1], encoding="utf-8"))
embed.load_model(backend=sys.argv[2])
loaded = time.perf_counter()
vectors = embed.embed_texts(texts, batch_size=int(sys.argv[3]) or None, backend=sys.argv[2])
encoded = time.perf_counter()
np.save(sys.argv[4], vectors)
# VmHWM belongs to this process's own memory map, unlike wait4's maxrss, which keeps the
# parent's high-water mark from before exec.
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"load_s": loaded - started, "encode_s": encoded - loaded, "peak_rss_mib": peak_kib / 1024}))
"""


def run_backend(backend: str, texts_file: Path, batch_size: int | None, out: Path) -> dict:
    """Load and encode in a fresh process; its figures and its peak RSS."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", ENCODE_ONE_BACKEND, str(texts_file), backend, str(batch_size or 0), str(out)],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    if result.returncode:
        raise SystemExit(f"{backend}: the encoding process failed ({result.returncode})")
    return json.loads(result.stdout.strip().splitlines()[-1])


def selected_rows(vectors: np.ndarray, budget: int) -> set[int]:
    """The pipeline's clustering, then its selection in each cluster, as row numbers."""
    labels = fit_clusters(vectors).labels
    chosen: set[int] = set()
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        chosen.update(int(rows[i]) for i in select_facility_location(vectors[rows], budget).indices)
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--batch-size", type=int, default=None, help="one for every backend (default: each its own)")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET)
    args = parser.parse_args()
    if not args.source.is_file():
        print(f"skipped: {args.source} is not there (the MergeIT-6k file from ../shared/data)")
        return 0

    texts = [row.sample.embedding_text for row in ingest_sources([args.source], {}).accepted]
    print(f"{len(texts)} rows from {args.source}, batch size {args.batch_size or 'each backend its own'}, budget {args.budget}; "
          f"load average {os.getloadavg()[0]:.2f} at the start")
    from mergeit_core import embed_onnx

    started = time.perf_counter()
    embed_onnx.model_path()
    print(f"ONNX export ready in {time.perf_counter() - started:.1f} s (0 when already cached)")

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        texts_file = Path(scratch) / "texts.json"
        texts_file.write_text(json.dumps(texts), encoding="utf-8")
        for backend in sorted(embed.BACKENDS, key=lambda name: name != "torch"):  # the reference first
            out = Path(scratch) / f"{backend}.npy"
            results[backend] = run_backend(backend, texts_file, args.batch_size, out)
            results[backend]["vectors"] = np.load(out)

    reference = results["torch"]
    reference_selection = selected_rows(reference["vectors"], args.budget)
    header = ("backend", "batch", "load s", "encode s", "encode vs torch", "cos min", "cos mean", "selected", "overlap", "peak RSS MiB")
    print(" | ".join(header))
    for backend, figures in results.items():
        cosine = np.einsum("ij,ij->i", figures["vectors"], reference["vectors"])
        selection = selected_rows(figures["vectors"], args.budget) if backend != "torch" else reference_selection
        print(" | ".join([
            backend,
            str(args.batch_size or embed.default_batch_size(backend)),
            f"{figures['load_s']:.2f}",
            f"{figures['encode_s']:.1f}",
            f"{reference['encode_s'] / figures['encode_s']:.2f}x",
            f"{cosine.min():.5f}",
            f"{cosine.mean():.6f}",
            f"{len(selection)}",
            f"{len(selection & reference_selection) / len(reference_selection):.2%}",
            f"{figures['peak_rss_mib']:.0f}",
        ]))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
