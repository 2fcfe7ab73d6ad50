"""Topic clusters: PCA keeping 95% of the variance, KMeans with k = int(sqrt(n/2)), seed 42.

Cluster keys (``c000``, ``c001``, ...) name Dagster partitions, so they must survive
re-clustering: KMeans is warm-started from the previous centroids when k is unchanged, and new
clusters take the key of the old cluster they share the most members with (Hungarian assignment).

A small change is not re-clustered at all (:func:`update_without_refit`): refitting moves rows
between many clusters, and every cluster whose membership moves is selected, paired and merged
again. New rows join their nearest centroid instead, so only the clusters they join go stale, until
the rows added or removed since the last full fit exceed ``INCREMENTAL_MAX_SHARE`` of the rows it
clustered. Until then k stays the fitted one: within 5% of the rows, int(sqrt(n/2)) moves by at most
2.5%, while refitting for that one extra cluster would re-select and re-merge nearly every cluster.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from mergeit_core.records import stable_hash

DEFAULT_SEED = 42
DEFAULT_VARIANCE = 0.95
# Rows added or removed since the last full fit, as a share of the rows it clustered, that are
# still placed without refitting; beyond it the clustering is fitted afresh (paper semantics).
INCREMENTAL_MAX_SHARE = 0.05


def cluster_count(n_rows: int) -> int:
    """The paper's k = int(sqrt(n / 2)), at least one cluster for any non-empty input."""
    return max(1, int(math.sqrt(n_rows / 2))) if n_rows else 0


def cluster_key(number: int) -> str:
    return f"c{number:03d}"


def membership_hash(source_ids: Sequence[str]) -> str:
    return stable_hash(sorted(source_ids))


@dataclass(frozen=True)
class Clustering:
    labels: np.ndarray            # (n,) cluster index per row
    centroids: np.ndarray         # (k, d) mean of each cluster's rows in embedding space
    n_components: int
    explained_variance: float
    warm_started: bool


def fit_clusters(
    embeddings: np.ndarray,
    *,
    seed: int = DEFAULT_SEED,
    variance: float = DEFAULT_VARIANCE,
    previous_centroids: np.ndarray | None = None,
) -> Clustering:
    """Cluster rows of ``embeddings``; ``previous_centroids`` (embedding space) warm-start KMeans
    when their count equals the new k."""
    n = embeddings.shape[0]
    k = cluster_count(n)
    if n < 2:
        return Clustering(np.zeros(n, dtype=np.int64), embeddings.astype(np.float32), embeddings.shape[1], 1.0, False)
    # The full solver is deterministic; the randomized one would shift partitions between reruns.
    pca = PCA(n_components=variance, svd_solver="full", random_state=seed)
    reduced = pca.fit_transform(embeddings)
    warm = previous_centroids is not None and len(previous_centroids) == k
    if warm:
        kmeans = KMeans(n_clusters=k, init=pca.transform(previous_centroids), n_init=1, random_state=seed)
    else:
        kmeans = KMeans(n_clusters=k, random_state=seed, n_init="auto")
    labels = kmeans.fit_predict(reduced)
    centroids = np.stack([embeddings[labels == c].mean(axis=0) for c in range(k)]).astype(np.float32)
    return Clustering(labels, centroids, int(pca.n_components_), float(pca.explained_variance_ratio_.sum()), warm)


def assign_stable_keys(
    source_ids: Sequence[str],
    labels: np.ndarray,
    previous_members: Mapping[str, set[str]],
) -> dict[int, str]:
    """Map each new cluster label to a key: the old key it shares the most members with
    (maximum total overlap), or a never-used key when it overlaps no old cluster."""
    new_labels = sorted(set(int(label) for label in labels))
    old_keys = sorted(previous_members)
    members_by_label: dict[int, set[str]] = {label: set() for label in new_labels}
    for source_id, label in zip(source_ids, labels):
        members_by_label[int(label)].add(source_id)
    keys: dict[int, str] = {}
    if old_keys:
        overlap = np.array(
            [[len(members_by_label[label] & previous_members[key]) for key in old_keys] for label in new_labels]
        )
        rows, cols = linear_sum_assignment(overlap, maximize=True)
        keys = {new_labels[r]: old_keys[c] for r, c in zip(rows, cols) if overlap[r, c] > 0}
    next_number = 1 + max((int(key[1:]) for key in old_keys), default=-1)
    for label in new_labels:
        if label not in keys:
            keys[label] = cluster_key(next_number)
            next_number += 1
    return keys


@dataclass(frozen=True)
class FullFit:
    """What the last full fit was, and how far the clustering has drifted from it since."""

    rows: int                  # rows it clustered
    rows_changed_since: int    # rows added to or removed from clusters since, without refitting
    seed: int
    n_components: int
    explained_variance: float


@dataclass(frozen=True)
class IncrementalUpdate:
    """The clustering after a small change, with no refit."""

    row_keys: list[str]               # the cluster key of each current row, in input order
    centroids: dict[str, np.ndarray]  # the mean of each cluster's current rows
    added: list[str]                  # rows placed at their nearest centroid
    removed: list[str]                # rows that left their cluster (no longer in the input)


def nearest_centroids(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (euclidean, in embedding space) for each row."""
    distances = (
        (embeddings**2).sum(axis=1, keepdims=True) - 2 * embeddings @ centroids.T + (centroids**2).sum(axis=1)
    )
    return distances.argmin(axis=1)


def update_without_refit(
    source_ids: Sequence[str],
    embeddings: np.ndarray,
    previous_centroids: Mapping[str, np.ndarray],
    previous_members: Mapping[str, set[str]],
    last_fit: FullFit | None,
    *,
    seed: int = DEFAULT_SEED,
    max_share: float = INCREMENTAL_MAX_SHARE,
) -> IncrementalUpdate | None:
    """Place new rows at their nearest existing centroid and drop rows that are gone, leaving
    every other row where it is, with the fitted k; None when a full fit is due instead: no fit
    on record (or one with another seed), a cluster would lose all its rows, or the rows changed
    since the last full fit would exceed ``max_share`` of the rows it clustered. Centroids stay in
    embedding space, so no PCA has to be kept."""
    if last_fit is None or last_fit.seed != seed or not previous_members:
        return None
    key_of = {source_id: key for key, members in previous_members.items() for source_id in members}
    current = set(source_ids)
    removed = sorted(source_id for source_id in key_of if source_id not in current)
    added_positions = [i for i, source_id in enumerate(source_ids) if source_id not in key_of]
    if last_fit.rows_changed_since + len(added_positions) + len(removed) > max_share * last_fit.rows:
        return None
    keys = sorted(previous_members)
    centroid_matrix = np.stack([previous_centroids[key] for key in keys]).astype(np.float32)
    nearest = nearest_centroids(embeddings[added_positions], centroid_matrix) if added_positions else []
    for position, label in zip(added_positions, nearest):
        key_of[source_ids[position]] = keys[int(label)]
    row_keys = [key_of[source_id] for source_id in source_ids]
    positions_by_key: dict[str, list[int]] = {key: [] for key in keys}
    for position, key in enumerate(row_keys):
        positions_by_key[key].append(position)
    if any(not positions for positions in positions_by_key.values()):
        return None
    touched = {key_of[source_ids[p]] for p in added_positions} | {
        key for key, members in previous_members.items() if members - current
    }
    centroids = {
        key: embeddings[positions].mean(axis=0).astype(np.float32) if key in touched else previous_centroids[key]
        for key, positions in positions_by_key.items()
    }
    return IncrementalUpdate(row_keys, centroids, [source_ids[p] for p in added_positions], removed)
