-- A deterministic sample of clustered rows with their embedding and whether the current
-- selection holds them (a row that moved cluster has already left the selection).
SELECT t.source_id, t.cluster_key, e.embedding, s.source_id IS NOT NULL AS selected
FROM topic_clusters AS t
JOIN instruction_embeddings AS e ON e.source_id = t.source_id AND e.model = $model
LEFT JOIN selected_subset AS s ON s.source_id = t.source_id AND s.cluster_key = t.cluster_key
ORDER BY hash(t.source_id), t.source_id
LIMIT $max_points;
