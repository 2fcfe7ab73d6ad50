-- Some clusters' selected rows with their embeddings, each cluster's rows in selection order.
SELECT s.cluster_key, s.source_id, e.embedding
FROM selected_subset AS s
JOIN instruction_embeddings AS e ON e.source_id = s.source_id AND e.model = $model
WHERE list_contains($cluster_keys, s.cluster_key)
ORDER BY s.cluster_key, s.selection_rank;
