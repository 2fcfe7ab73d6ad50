-- One cluster's selected rows with their embeddings, in selection order.
SELECT s.source_id, e.embedding
FROM selected_subset AS s
JOIN instruction_embeddings AS e ON e.source_id = s.source_id AND e.model = $model
WHERE s.cluster_key = $cluster_key
ORDER BY s.selection_rank;
