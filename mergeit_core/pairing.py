"""Merge groups: samples of one cluster that are similar enough to be merged into one.

The paper's code walks the rows in order and pairs each with the first unused row above the
threshold. Here pairs maximise the total similarity instead: an exact maximum-weight matching for
groups of two, and greedy complete-linkage agglomeration for larger groups.

On a rerun (:func:`groups_keeping`), groups that still hold are kept and only the rows outside
them are grouped: a global matching can reshuffle many pairs when one row joins, and each new
pair is another LLM merge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np


@dataclass(frozen=True)
class Group:
    """Indices into the cluster's selected rows, and each member's mean similarity to the rest."""

    members: tuple[int, ...]
    similarities: tuple[float, ...]
    internal_similarity: float  # sum over the group's member pairs


def cosine_similarity_matrix(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarities; rows are normalised here so callers may pass raw vectors."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.where(norms == 0, 1.0, norms)
    return unit @ unit.T


def _group_of(members: Sequence[int], similarity: np.ndarray) -> Group:
    ordered = tuple(sorted(members))
    block = similarity[np.ix_(ordered, ordered)]
    off_diagonal = block.sum(axis=1) - np.diag(block)
    sims = tuple(float(s) / (len(ordered) - 1) for s in off_diagonal)
    return Group(ordered, sims, float(off_diagonal.sum()) / 2)


def max_similarity_pairs(similarity: np.ndarray, threshold: float) -> list[Group]:
    """Pairs above ``threshold`` with the largest total similarity (exact weighted matching)."""
    n = similarity.shape[0]
    graph = nx.Graph()
    rows, cols = np.nonzero(np.triu(similarity > threshold, k=1))
    graph.add_weighted_edges_from((int(i), int(j), float(similarity[i, j])) for i, j in zip(rows, cols))
    matching = nx.max_weight_matching(graph, maxcardinality=False) if n else set()
    return sorted((_group_of(pair, similarity) for pair in matching), key=lambda g: g.members)


def similarity_groups(similarity: np.ndarray, threshold: float, max_group_size: int = 2) -> list[Group]:
    """Disjoint groups of 2..max_group_size rows whose every pair is above ``threshold``.

    Pairs come from the exact matching. Larger groups grow agglomeratively: edges are taken by
    descending similarity and join two groups when the union fits and every pair inside stays
    above the threshold (complete linkage).
    """
    if max_group_size < 2:
        raise ValueError("max_group_size must be at least 2")
    if max_group_size == 2:
        return max_similarity_pairs(similarity, threshold)
    group_of = {i: frozenset((i,)) for i in range(similarity.shape[0])}
    rows, cols = np.nonzero(np.triu(similarity > threshold, k=1))
    for i, j in sorted(zip(rows.tolist(), cols.tolist()), key=lambda e: -similarity[e]):
        union = group_of[i] | group_of[j]
        if group_of[i] is group_of[j] or len(union) > max_group_size:
            continue
        if all(similarity[a, b] > threshold for a in union for b in union if a < b):
            for member in union:
                group_of[member] = union
    groups = {g for g in group_of.values() if len(g) > 1}
    return sorted((_group_of(g, similarity) for g in groups), key=lambda g: g.members)


def groups_keeping(
    similarity: np.ndarray, threshold: float, max_group_size: int, kept: Sequence[Sequence[int]]
) -> list[Group]:
    """:func:`similarity_groups` around previous groups: each ``kept`` group (indices into
    ``similarity``) stays while it fits ``max_group_size``, shares no row with an earlier kept
    group and every pair in it is above ``threshold``; the other rows are grouped among
    themselves. With nothing kept this is exactly :func:`similarity_groups`."""
    taken: set[int] = set()
    groups = []
    for members in kept:
        block = similarity[np.ix_(members, members)]
        fits = 2 <= len(members) <= max_group_size and taken.isdisjoint(members)
        if fits and bool((block[np.triu_indices(len(members), k=1)] > threshold).all()):
            taken.update(members)
            groups.append(_group_of(members, similarity))
    free = [i for i in range(similarity.shape[0]) if i not in taken]
    for group in similarity_groups(similarity[np.ix_(free, free)], threshold, max_group_size):
        groups.append(_group_of([free[i] for i in group.members], similarity))
    return sorted(groups, key=lambda g: g.members)


def in_order_pairs(similarity: np.ndarray, threshold: float) -> list[Group]:
    """The reference code's pairing (each row, in order, takes the first unused row above the
    threshold); kept as the baseline that :func:`max_similarity_pairs` must not lose to."""
    used: set[int] = set()
    pairs = []
    for i in range(similarity.shape[0]):
        if i in used:
            continue
        for j in range(i + 1, similarity.shape[0]):
            if j not in used and similarity[i, j] > threshold:
                used.update((i, j))
                pairs.append(_group_of((i, j), similarity))
                break
    return pairs
