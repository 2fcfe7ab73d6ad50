-- Some clusters' rows with their embeddings, each cluster's rows in source_id order (selection
-- is deterministic).
SELECT t.cluster_key, t.source_id, t.placed_since_fit, e.embedding
FROM topic_clusters AS t
JOIN instruction_embeddings AS e ON e.source_id = t.source_id AND e.model = $model
WHERE list_contains($cluster_keys, t.cluster_key)
ORDER BY t.cluster_key, t.source_id;
