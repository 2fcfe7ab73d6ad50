"""The per-cluster stages read and write all their clusters at once; each cluster's result must
be exactly what that cluster alone gives (same rows selected in the same order, same groups)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mergeit_core import embed, pairing, select, stages
from mergeit_core.records import Sample, group_id
from mergeit_core.store import connect


def cluster_alone(db: Path, sql: str, key: str) -> tuple[list[str], np.ndarray]:
    with connect(db) as conn:
        rows = conn.execute(sql, [embed.model_id(), key]).fetchall()
    return [r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.float32).reshape(len(rows), -1)


def test_batched_selection_and_pairing_equal_each_cluster_alone(source_dir: Path, db_path: Path) -> None:
    stages.ingest(db_path, [str(source_dir)])
    stages.embed_missing(db_path)
    keys = sorted(stages.cluster_topics(db_path).sizes)
    stages.select_clusters(db_path, keys, budget=10)
    stages.pair_clusters(db_path, keys, threshold=0.55)
    with connect(db_path) as conn:
        selected = conn.execute("SELECT cluster_key, source_id FROM selected_subset ORDER BY cluster_key, selection_rank").fetchall()
        pairs = {g for (g,) in conn.execute("SELECT DISTINCT group_id FROM merge_pairs").fetchall()}

    expected_selected, expected_pairs = [], set()
    for key in keys:
        ids, matrix = cluster_alone(
            db_path,
            "SELECT t.source_id, e.embedding FROM topic_clusters t JOIN instruction_embeddings e "
            "ON e.source_id = t.source_id AND e.model = ? WHERE t.cluster_key = ? ORDER BY t.source_id",
            key,
        )
        picked = [ids[i] for i in select.select_facility_location(matrix, 10).indices]
        expected_selected += [(key, source_id) for source_id in picked]
        by_id = dict(zip(ids, matrix))
        chosen = np.stack([by_id[source_id] for source_id in picked])
        for group in pairing.similarity_groups(pairing.cosine_similarity_matrix(chosen), 0.55):
            expected_pairs.add(group_id([picked[i] for i in group.members]))
    assert selected == expected_selected
    assert pairs == expected_pairs and pairs


def test_embedding_chunks_are_sorted_by_length_across_chunks_and_each_row_keeps_its_vector(
    source_dir: Path, db_path: Path, monkeypatch
) -> None:
    stages.ingest(db_path, [str(source_dir)])
    encoded_calls: list[list[str]] = []
    embed_texts = embed.embed_texts

    def recording_embed_texts(texts, **kwargs):
        encoded_calls.append(list(texts))
        return embed_texts(texts, **kwargs)

    monkeypatch.setattr(embed, "embed_texts", recording_embed_texts)
    stats = stages.embed_missing(db_path, chunk_size=16)
    monkeypatch.undo()

    encoded = [text for call in encoded_calls for text in call]
    assert len(encoded_calls) == -(-stats.embedded // 16) > 1
    assert [len(text) for text in encoded] == sorted((len(text) for text in encoded), reverse=True)
    with connect(db_path) as conn:
        rows = conn.execute(
            "SELECT s.instruction, s.input, e.embedding FROM source_instructions s "
            "JOIN instruction_embeddings e USING (source_id) ORDER BY s.source_id"
        ).fetchall()
    stored = np.array([row[2] for row in rows], dtype=np.float32)
    alone = embed.embed_texts([Sample(instruction, input_, "").embedding_text for instruction, input_, _ in rows])
    assert len(rows) == stats.embedded == stats.total
    assert np.min(np.sum(stored * alone, axis=1)) > 0.9999
