-- Every current source row with its embedding, in a fixed order so clustering is reproducible.
SELECT s.source_id, e.embedding
FROM source_instructions AS s
JOIN instruction_embeddings AS e ON e.source_id = s.source_id AND e.model = $model
ORDER BY s.source_id;
