-- One cluster's rows with their embeddings, in source_id order (selection is deterministic).
SELECT t.source_id, e.embedding
FROM topic_clusters AS t
JOIN instruction_embeddings AS e ON e.source_id = t.source_id AND e.model = $model
WHERE t.cluster_key = $cluster_key
ORDER BY t.source_id;
