"""Selection-half benchmarks, each printing ratios measured in this one run.

1. Facility-location kernel: numpy (``euclidean_similarity_kernel``) vs submodlib building the same
   dense kernel from ``data=`` (a C++ loop over Python lists), and the whole selection both ways.
2. Pairing: exact max-weight matching vs the reference in-order greedy (time and total similarity).
3. Clustering + selection + pairing at Alpaca scale on synthetic embeddings (52k rows with topic
   structure; the real 52k file is not on this machine, so say so when quoting these numbers).

Run: python bench/bench_selection.py [--rows 52002]
     python bench/bench_selection.py --scale-only --rows 200000   # 3. alone, with this process's peak RSS
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from submodlib import FacilityLocationFunction

from mergeit_core import cluster, pairing, select


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def synthetic_embeddings(rows: int, topics: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, dim))
    x = centres[rng.integers(0, topics, rows)] + 0.9 * rng.normal(size=(rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bench_kernel() -> None:
    print("== facility location, one cluster, budget 75")
    for n in (150, 320, 700):
        x = synthetic_embeddings(n, 4, seed=n)
        t_numpy, ours = timed(lambda: select.select_facility_location(x, 75))
        t_lib, theirs = timed(lambda: FacilityLocationFunction(n=n, mode="dense", data=x, metric="euclidean").maximize(
            budget=75, optimizer="LazyGreedy", show_progress=False))
        same = list(ours.indices) == [i for i, _ in theirs]
        print(f"n={n:4d}  numpy kernel {t_numpy*1e3:7.1f} ms  submodlib data= {t_lib*1e3:7.1f} ms  "
              f"speed-up {t_lib / t_numpy:5.2f}x  same selection: {same}")


def bench_pairing() -> None:
    print("== pairing 75 selected rows, threshold 0.55")
    for seed in range(3):
        sim = pairing.cosine_similarity_matrix(synthetic_embeddings(75, 3, seed=seed))
        t_exact, exact = timed(lambda: pairing.max_similarity_pairs(sim, 0.55))
        t_greedy, greedy = timed(lambda: pairing.in_order_pairs(sim, 0.55))
        total_exact = sum(g.internal_similarity for g in exact)
        total_greedy = sum(g.internal_similarity for g in greedy)
        print(f"seed {seed}: matching {len(exact)} pairs, total {total_exact:.2f} in {t_exact*1e3:.1f} ms; "
              f"in-order {len(greedy)} pairs, total {total_greedy:.2f} in {t_greedy*1e3:.1f} ms; "
              f"similarity ratio {total_exact / max(total_greedy, 1e-9):.3f}")


def bench_scale(rows: int) -> None:
    print(f"== {rows} synthetic rows (not real data): cluster -> select -> pair")
    x = synthetic_embeddings(rows, 300)
    started = time.perf_counter()
    fitted = cluster.fit_clusters(x)
    t_cluster = time.perf_counter() - started
    k = len(fitted.centroids)
    started = time.perf_counter()
    selected = {c: np.flatnonzero(fitted.labels == c) for c in range(k)}
    picks = {c: idx[list(select.select_facility_location(x[idx], 75).indices)] for c, idx in selected.items()}
    t_select = time.perf_counter() - started
    started = time.perf_counter()
    groups = sum(len(pairing.similarity_groups(pairing.cosine_similarity_matrix(x[p]), 0.55)) for p in picks.values())
    t_pair = time.perf_counter() - started
    kept = sum(len(p) for p in picks.values())
    print(f"k={k} components={fitted.n_components}  cluster {t_cluster:.1f} s  select {t_select:.1f} s  "
          f"pair {t_pair:.1f} s  selected {kept} ({kept / rows:.1%})  groups {groups}")
    started = time.perf_counter()
    cluster.fit_clusters(x, previous_centroids=fitted.centroids)
    t_warm = time.perf_counter() - started
    print(f"warm-started re-clustering {t_warm:.1f} s vs cold {t_cluster:.1f} s ({t_cluster / t_warm:.2f}x)")
    # Linux reports ru_maxrss in KiB.
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=52002)
    parser.add_argument("--scale-only", action="store_true", help="only cluster -> select -> pair at --rows")
    args = parser.parse_args()
    if not args.scale_only:
        bench_kernel()
        bench_pairing()
    bench_scale(args.rows)


if __name__ == "__main__":
    main()
