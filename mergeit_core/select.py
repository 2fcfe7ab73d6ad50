"""Per-cluster selection by facility location (submodlib, dense kernel, LazyGreedy).

A cluster that only gained a few rows since its last selection keeps that selection and lets each
new row in by a swap (:func:`swap_in_rows`): the greedy run afresh over the grown cluster drops
its last picks for other rows, and each dropped row dissolves a merge group that was paid for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist

DEFAULT_BUDGET = 75


@dataclass(frozen=True)
class Selection:
    """Row indices in the order the greedy picked them; gains are None for a kept-whole cluster."""

    indices: tuple[int, ...]
    gains: tuple[float | None, ...]


def euclidean_similarity_kernel(embeddings: np.ndarray) -> np.ndarray:
    """submodlib's dense euclidean kernel, exp(-distance / n_features), computed in numpy.

    Identical to what submodlib builds from ``data=`` (it loops in C++ over Python lists), and
    several times faster on a full cluster.
    """
    distances = cdist(embeddings, embeddings, metric="euclidean")
    return np.exp(-distances / embeddings.shape[1])


def select_facility_location(embeddings: np.ndarray, budget: int = DEFAULT_BUDGET) -> Selection:
    """Up to ``budget`` representative rows of one cluster; clusters no larger are kept whole."""
    if budget < 1:
        raise ValueError("budget must be at least 1")
    n = embeddings.shape[0]
    if n <= budget:
        return Selection(tuple(range(n)), (None,) * n)
    # Imported here: submodlib is slow to import and only this step needs it.
    from submodlib import FacilityLocationFunction

    function = FacilityLocationFunction(
        n=n, mode="dense", separate_rep=False, sijs=euclidean_similarity_kernel(embeddings)
    )
    picked = function.maximize(
        budget=budget,
        optimizer="LazyGreedy",
        stopIfZeroGain=False,
        stopIfNegativeGain=False,
        verbose=False,
        show_progress=False,
    )
    return Selection(tuple(int(i) for i, _ in picked), tuple(float(g) for _, g in picked))


def swap_in_rows(embeddings: np.ndarray, previous: Selection, candidates: Sequence[int]) -> Selection:
    """``previous`` (indices into ``embeddings``) with candidate rows swapped in: a candidate
    replaces the selected row whose swap raises the facility-location objective most, if any
    does; passes repeat until no candidate swap raises it, so a second call changes nothing. The
    incoming row takes the replaced row's rank, and the objective's rise as its gain."""
    kernel = euclidean_similarity_kernel(embeddings)
    chosen = list(previous.indices)
    gains = list(previous.gains)
    swapped = True
    while swapped:
        swapped = False
        for candidate in candidates:
            if candidate in chosen:
                continue
            covered = kernel[:, chosen]
            order = np.argsort(-covered, axis=1)
            best = covered[np.arange(len(kernel)), order[:, 0]]
            second = covered[np.arange(len(kernel)), order[:, 1]] if len(chosen) > 1 else np.zeros(len(kernel))
            incoming = kernel[:, candidate]
            # Dropping slot s only changes the rows s covers best: they fall back to their second
            # best, or to the incoming row.
            loss_by_slot = np.bincount(
                order[:, 0], weights=np.maximum(incoming, best) - np.maximum(incoming, second), minlength=len(chosen)
            )
            rise = float(np.maximum(incoming, best).sum() - best.sum()) - loss_by_slot
            slot = int(np.argmax(rise))
            if rise[slot] > 1e-9:
                chosen[slot], gains[slot] = candidate, float(rise[slot])
                swapped = True
    return Selection(tuple(chosen), tuple(gains))


def select_keeping(
    embeddings: np.ndarray, budget: int, previous: Selection | None, candidates: Sequence[int]
) -> Selection:
    """The cluster's selection given its previous one (indices into ``embeddings``): kept, with
    ``candidates`` let in by :func:`swap_in_rows`, when it was a greedy pick of ``budget`` rows
    and the cluster is still larger than the budget; otherwise :func:`select_facility_location`
    afresh (a first run, or a cluster that was kept whole)."""
    if previous is None or embeddings.shape[0] <= budget or len(previous.indices) != budget or None in previous.gains:
        return select_facility_location(embeddings, budget)
    return swap_in_rows(embeddings, previous, candidates)
