-- Current source rows that have no embedding for the model yet.
SELECT s.source_id, s.instruction, s.input
FROM source_instructions AS s
ANTI JOIN instruction_embeddings AS e ON e.source_id = s.source_id AND e.model = $model
ORDER BY s.source_id;
