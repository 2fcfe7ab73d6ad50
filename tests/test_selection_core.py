"""Unit tests of the selection half's core functions (no Dagster)."""

from __future__ import annotations

import numpy as np
import pytest
from submodlib import FacilityLocationFunction

from mergeit_core import cluster, pairing, select


def unit_rows(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def topical_rows(n_topics: int, per_topic: int, d: int = 48, noise: float = 0.35, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_topics, d))
    x = np.concatenate([c + noise * rng.normal(size=(per_topic, d)) for c in centres]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(("n", "k"), [(0, 0), (1, 1), (2, 1), (7, 1), (8, 2), (200, 10), (6159, 55), (52002, 161)])
def test_cluster_count_is_int_sqrt_half_n(n: int, k: int) -> None:
    assert cluster.cluster_count(n) == k


def test_small_cluster_is_kept_whole_without_gains() -> None:
    rows = unit_rows(75)
    selection = select.select_facility_location(rows, budget=75)
    assert selection.indices == tuple(range(75))
    assert set(selection.gains) == {None}


def test_selection_equals_submodlib_called_directly() -> None:
    rows = unit_rows(240, d=64, seed=7)
    ours = select.select_facility_location(rows, budget=75)
    direct = FacilityLocationFunction(n=240, mode="dense", data=rows, metric="euclidean").maximize(
        budget=75, optimizer="LazyGreedy", stopIfZeroGain=False, stopIfNegativeGain=False, show_progress=False
    )
    assert list(ours.indices) == [int(i) for i, _ in direct]
    assert np.allclose(ours.gains, [g for _, g in direct], rtol=1e-4)
    assert len(set(ours.indices)) == 75


def test_kernel_matches_submodlib_dense_euclidean_kernel() -> None:
    import submodlib_cpp

    rows = unit_rows(30, d=16, seed=3)
    expected = np.array(submodlib_cpp.create_square_kernel_dense(rows.tolist(), "euclidean"))
    assert np.allclose(select.euclidean_similarity_kernel(rows), expected, atol=1e-5)


def test_fit_clusters_is_reproducible_and_keeps_95_percent_variance() -> None:
    rows = topical_rows(6, 40)
    first = cluster.fit_clusters(rows)
    second = cluster.fit_clusters(rows)
    assert np.array_equal(first.labels, second.labels)
    assert first.explained_variance >= 0.95
    assert len(set(first.labels)) == cluster.cluster_count(240)
    assert first.centroids.shape == (cluster.cluster_count(240), rows.shape[1])


def test_warm_start_with_previous_centroids_keeps_clusters() -> None:
    rows = topical_rows(6, 40, seed=2)
    ids = [f"r{i}" for i in range(len(rows))]
    first = cluster.fit_clusters(rows)
    keys = cluster.assign_stable_keys(ids, first.labels, {})
    members = {keys[int(l)]: set() for l in first.labels}
    for source_id, label in zip(ids, first.labels):
        members[keys[int(label)]].add(source_id)
    # One new row: k stays int(sqrt(241/2)) = 10, so KMeans warm-starts.
    grown = np.concatenate([rows, topical_rows(1, 1, seed=9)])
    second = cluster.fit_clusters(grown, previous_centroids=first.centroids)
    assert second.warm_started
    new_keys = cluster.assign_stable_keys(ids + ["new"], second.labels, members)
    assert set(new_keys.values()) == set(members)
    new_members: dict[str, set[str]] = {}
    for source_id, label in zip(ids + ["new"], second.labels):
        new_members.setdefault(new_keys[int(label)], set()).add(source_id)
    unchanged = sum(new_members[key] - {"new"} == old for key, old in members.items())
    assert unchanged >= len(members) - 1


def test_stable_keys_follow_members_and_never_collide() -> None:
    previous = {"c000": {"a", "b"}, "c001": {"c", "d"}, "c004": {"e"}}
    labels = np.array([1, 1, 0, 0, 2, 3])
    keys = cluster.assign_stable_keys(["a", "b", "c", "d", "x", "y"], labels, previous)
    assert keys[1] == "c000" and keys[0] == "c001"
    assert {keys[2], keys[3]} == {"c005", "c006"}


def test_pairs_respect_threshold_never_reuse_rows_and_cover_only_given_rows() -> None:
    rows = topical_rows(4, 20, seed=5)
    similarity = pairing.cosine_similarity_matrix(rows)
    groups = pairing.similarity_groups(similarity, 0.55)
    used = [m for g in groups for m in g.members]
    assert groups and len(used) == len(set(used))
    assert all(len(g.members) == 2 and similarity[g.members[0], g.members[1]] > 0.55 for g in groups)
    assert all(np.isclose(g.similarities[0], similarity[g.members]).all() for g in groups)


@pytest.mark.parametrize("seed", range(5))
def test_matching_total_similarity_at_least_in_order_greedy(seed: int) -> None:
    similarity = pairing.cosine_similarity_matrix(topical_rows(3, 25, noise=0.8, seed=seed))
    ours = sum(g.internal_similarity for g in pairing.max_similarity_pairs(similarity, 0.55))
    baseline = sum(g.internal_similarity for g in pairing.in_order_pairs(similarity, 0.55))
    assert ours >= baseline - 1e-9


def test_matching_beats_in_order_greedy_on_a_crafted_case() -> None:
    # Row 0 is first-above-threshold with 1, but 1-2 and 0-3 are better together.
    similarity = np.array([
        [1.0, 0.6, 0.1, 0.9],
        [0.6, 1.0, 0.95, 0.1],
        [0.1, 0.95, 1.0, 0.1],
        [0.9, 0.1, 0.1, 1.0],
    ])
    ours = pairing.max_similarity_pairs(similarity, 0.55)
    assert {g.members for g in ours} == {(0, 3), (1, 2)}
    assert {g.members for g in pairing.in_order_pairs(similarity, 0.55)} == {(0, 1)}


def test_larger_groups_keep_every_pair_above_threshold() -> None:
    similarity = pairing.cosine_similarity_matrix(topical_rows(3, 12, noise=0.3, seed=4))
    groups = pairing.similarity_groups(similarity, 0.55, max_group_size=3)
    assert any(len(g.members) == 3 for g in groups)
    for g in groups:
        assert 2 <= len(g.members) <= 3
        assert all(similarity[i, j] > 0.55 for i in g.members for j in g.members if i != j)
    used = [m for g in groups for m in g.members]
    assert len(used) == len(set(used))
