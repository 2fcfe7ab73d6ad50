"""Topic clusters: PCA keeping 95% of the variance, KMeans with k = int(sqrt(n/2)), seed 42.

Cluster keys (``c000``, ``c001``, ...) name Dagster partitions, so they must survive
re-clustering: KMeans is warm-started from the previous centroids when k is unchanged, and new
clusters take the key of the old cluster they share the most members with (Hungarian assignment).
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
