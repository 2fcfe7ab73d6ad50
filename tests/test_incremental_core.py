"""A small change re-clusters, selects and pairs only what it touches (no Dagster): new rows join
their nearest centroid, a cluster's selection is kept with new rows swapped in, groups that still
hold are kept; a first run, a change of k or a large share of new rows take the batch path."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from mergeit_core import cluster, embed, pairing, select, stages
from mergeit_core.store import connect, embedding_array, insert_columns, transaction


def topical_rows(n_topics: int, per_topic: int, d: int = 48, noise: float = 0.35, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_topics, d))
    x = np.concatenate([c + noise * rng.normal(size=(per_topic, d)) for c in centres]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def first_clustering(rows: np.ndarray, ids: list[str]) -> tuple[dict[str, set[str]], dict[str, np.ndarray], cluster.FullFit]:
    fitted = cluster.fit_clusters(rows)
    keys = cluster.assign_stable_keys(ids, fitted.labels, {})
    members: dict[str, set[str]] = {key: set() for key in keys.values()}
    for source_id, label in zip(ids, fitted.labels):
        members[keys[int(label)]].add(source_id)
    centroids = {keys[label]: fitted.centroids[label] for label in keys}
    return members, centroids, cluster.FullFit(len(ids), 0, cluster.DEFAULT_SEED, fitted.n_components, fitted.explained_variance)


def test_a_small_share_of_new_rows_joins_the_nearest_centroid_and_moves_nothing_else() -> None:
    rows = topical_rows(6, 35, seed=2)  # 210 rows, and 212: k = 10
    ids = [f"r{i:03d}" for i in range(len(rows))]
    members, centroids, fit = first_clustering(rows, ids)
    new_rows = rows[[5, 45]] + 0.01  # near two known topics
    grown = np.concatenate([rows, new_rows / np.linalg.norm(new_rows, axis=1, keepdims=True)])
    update = cluster.update_without_refit(ids + ["n1", "n2"], grown, centroids, members, fit)
    assert update is not None and update.added == ["n1", "n2"] and update.removed == []
    key_of = dict(zip(ids + ["n1", "n2"], update.row_keys))
    assert all(key_of[source_id] == key for key, ids_ in members.items() for source_id in ids_)
    keys = sorted(centroids)
    nearest = cluster.nearest_centroids(grown[-2:], np.stack([centroids[k] for k in keys]))
    assert [key_of["n1"], key_of["n2"]] == [keys[i] for i in nearest]
    touched = {key_of["n1"], key_of["n2"]}
    # Only the clusters that gained a row get a new centroid (their members' mean).
    for key in keys:
        if key in touched:
            positions = [i for i, k in enumerate(update.row_keys) if k == key]
            assert np.allclose(update.centroids[key], grown[positions].mean(axis=0), atol=1e-6)
        else:
            assert np.array_equal(update.centroids[key], centroids[key])


def test_removed_rows_leave_only_their_own_clusters() -> None:
    rows = topical_rows(6, 40, seed=3)
    ids = [f"r{i:03d}" for i in range(len(rows))]
    members, centroids, fit = first_clustering(rows, ids)
    gone = "r007"
    update = cluster.update_without_refit(ids[:7] + ids[8:], np.delete(rows, 7, axis=0), centroids, members, fit)
    assert update is not None and update.removed == [gone] and update.added == []
    [home] = [key for key, ids_ in members.items() if gone in ids_]
    assert [k for k in sorted(centroids) if not np.array_equal(update.centroids[k], centroids[k])] == [home]


def test_batch_fit_when_the_share_is_large_or_no_fit_is_known_else_k_stays_fitted() -> None:
    rows = topical_rows(5, 40, seed=4)  # 200 rows: k = 10 up to 241 rows; 5% = 10 rows
    ids = [f"r{i:03d}" for i in range(len(rows))]
    members, centroids, fit = first_clustering(rows, ids)
    extra = topical_rows(6, 10, seed=5)

    def update(count: int, last_fit: cluster.FullFit | None = fit):
        return cluster.update_without_refit(
            ids + [f"n{i}" for i in range(count)], np.concatenate([rows, extra[:count]]), centroids, members, last_fit
        )

    assert update(10) is not None
    assert update(11) is None                                                      # over 5% of the fitted rows
    assert update(2, last_fit=None) is None                                        # no full fit on record
    assert update(2, last_fit=cluster.FullFit(200, 9, cluster.DEFAULT_SEED, 5, 0.95)) is None  # 9 changed before
    assert update(2, last_fit=cluster.FullFit(200, 0, 7, 5, 0.95)) is None         # fitted with another seed
    # 42 more rows are a small share of a fit on 4,000 rows: 242 rows would make int(sqrt(121)) = 11,
    # but the fitted 10 clusters stay until the share calls for a refit.
    more = np.concatenate([rows, extra[:42]])
    kept = cluster.update_without_refit(
        ids + [f"n{i}" for i in range(42)], more, centroids, members, cluster.FullFit(4000, 0, cluster.DEFAULT_SEED, 5, 0.95)
    )
    assert kept is not None and len(kept.added) == 42 and set(kept.row_keys) == set(members)
    assert len(members) == 10 and cluster.cluster_count(len(more)) == 11


def test_swapping_in_new_rows_keeps_the_rest_of_the_selection_and_settles() -> None:
    rows = topical_rows(2, 60, seed=6)
    first = select.select_facility_location(rows, budget=20)
    grown = np.concatenate([rows, topical_rows(2, 60, noise=0.9, seed=7)[:6]])
    candidates = list(range(len(rows), len(grown)))
    kept = select.select_keeping(grown, 20, first, candidates)
    assert len(kept.indices) == 20 and len(set(kept.indices)) == 20
    swapped_in = set(kept.indices) - set(first.indices)
    assert swapped_in <= set(candidates)
    # Every change is a swap: the old rows that stay keep their rank.
    assert sum(a != b for a, b in zip(first.indices, kept.indices)) == len(swapped_in)
    objective = lambda s: select.euclidean_similarity_kernel(grown)[:, list(s.indices)].max(axis=1).sum()  # noqa: E731
    assert objective(kept) >= objective(first)
    assert select.select_keeping(grown, 20, kept, candidates) == kept
    # A first run, or a cluster that was kept whole, is selected afresh.
    assert select.select_keeping(grown, 20, None, candidates) == select.select_facility_location(grown, 20)
    whole = select.select_facility_location(rows[:20], budget=20)
    assert select.select_keeping(grown, 20, whole, candidates) == select.select_facility_location(grown, 20)


def test_groups_that_still_hold_are_kept_and_only_free_rows_are_paired() -> None:
    similarity = pairing.cosine_similarity_matrix(topical_rows(3, 12, noise=0.6, seed=8))
    fresh = pairing.similarity_groups(similarity, 0.55)
    assert pairing.groups_keeping(similarity, 0.55, 2, []) == fresh
    assert pairing.groups_keeping(similarity, 0.55, 2, [g.members for g in fresh]) == fresh
    # A kept pair the fresh matching would not choose stays; the rest pair among themselves.
    rows, cols = np.nonzero(np.triu(similarity > 0.55, k=1))
    chosen = {g.members for g in fresh}
    kept = next((int(i), int(j)) for i, j in zip(rows, cols) if (int(i), int(j)) not in chosen)
    groups = pairing.groups_keeping(similarity, 0.55, 2, [kept])
    assert kept in {g.members for g in groups}
    used = [m for g in groups for m in g.members]
    assert len(used) == len(set(used))
    # A kept group below the threshold is dissolved.
    assert (0, 1) not in {g.members for g in pairing.groups_keeping(similarity, 2.0, 2, [(0, 1)])}


# --- the stages over a DuckDB file, with made-up embeddings --------------------------------------


def write_rows(db: Path, ids: list[str], vectors: np.ndarray) -> None:
    """Source rows and their embeddings as ingest and embed would leave them."""
    now = datetime(2026, 1, 1)
    with connect(db) as conn, transaction(conn):
        conn.execute("DELETE FROM source_instructions")
        insert_columns(conn, "source_instructions", {
            "source_id": ids,
            "source_file": ["rows.jsonl"] * len(ids),
            "source_row": pa.array(range(1, len(ids) + 1), pa.int32()),
            "source_turn": pa.array([0] * len(ids), pa.int32()),
            "instruction": ids, "input": [""] * len(ids), "output": ids,
            "ingested_at": pa.array([now] * len(ids), pa.timestamp("us")),
        })
        known = {s for (s,) in conn.execute("SELECT source_id FROM instruction_embeddings").fetchall()}
        fresh = [i for i, source_id in enumerate(ids) if source_id not in known]
        insert_columns(conn, "instruction_embeddings", {
            "source_id": [ids[i] for i in fresh],
            "model": [embed.model_id()] * len(fresh),
            "embedding": embedding_array(vectors[fresh]),
            "embedded_at": pa.array([now] * len(fresh), pa.timestamp("us")),
        })


def stale_pairings(db: Path) -> list[str]:
    """Clusters whose merge groups were made from another membership (merging is not run here)."""
    with connect(db) as conn:
        return [k for (k,) in conn.execute(
            "SELECT c.cluster_key FROM clusters c LEFT JOIN partition_inputs p "
            "ON p.cluster_key = c.cluster_key AND p.asset_name = 'merge_pairs' "
            "WHERE p.input_hash IS DISTINCT FROM c.membership_hash ORDER BY 1").fetchall()]


def groups(db: Path) -> set[str]:
    with connect(db) as conn:
        return {g for (g,) in conn.execute("SELECT DISTINCT group_id FROM merge_pairs").fetchall()}


def test_stages_rerun_only_the_clusters_new_rows_join(db_path: Path) -> None:
    vectors = topical_rows(8, 30, d=embed.EMBEDDING_DIM, noise=0.9, seed=9)  # 240 rows: k = 10
    ids = [f"r{i:03d}" for i in range(len(vectors))]
    write_rows(db_path, ids[:236], vectors[:236])
    first = stages.cluster_topics(db_path)
    assert first.refitted and "re-clustered 236 rows" in first.method
    stages.select_clusters(db_path, sorted(first.sizes), budget=12)
    stages.pair_clusters(db_path, sorted(first.sizes), threshold=0.55)
    before = groups(db_path)
    assert stale_pairings(db_path) == [] and before

    write_rows(db_path, ids, vectors)  # +4 rows (1.7%), k stays 10
    second = stages.cluster_topics(db_path)
    assert not second.refitted and second.placed == 4
    assert second.method == "assigned 4 new rows to existing clusters, removed 0 (no refit)"
    with connect(db_path) as conn:
        joined = {k for (k,) in conn.execute(
            "SELECT DISTINCT cluster_key FROM topic_clusters WHERE source_id IN ('r236','r237','r238','r239')").fetchall()}
        assert conn.execute("SELECT fitted_rows, rows_changed_since FROM cluster_fit").fetchall() == [(236, 4)]
    assert set(second.changed) == joined == set(stale_pairings(db_path))
    # Every cluster reruns (as a partition range may): the untouched ones come out the same.
    stages.select_clusters(db_path, sorted(second.sizes), budget=12)
    stages.pair_clusters(db_path, sorted(second.sizes), threshold=0.55)
    new_groups = groups(db_path) - before
    with connect(db_path) as conn:
        with_new_row = {g for (g,) in conn.execute(
            "SELECT DISTINCT group_id FROM merge_pairs WHERE source_id IN ('r236','r237','r238','r239')").fetchall()}
    assert with_new_row <= new_groups and len(new_groups) <= 2 * max(len(with_new_row), 1)

    write_rows(db_path, ids[:100], vectors[:100])  # most rows gone: k = 7, a full fit
    third = stages.cluster_topics(db_path)
    assert third.refitted and third.k == cluster.cluster_count(100)
    with connect(db_path) as conn:
        assert conn.execute("SELECT fitted_rows, rows_changed_since FROM cluster_fit").fetchall() == [(100, 0)]
        assert conn.execute("SELECT count(*) FROM topic_clusters WHERE placed_since_fit").fetchall()[0][0] == 0
