SELECT count(*) FROM source_instructions AS s
ANTI JOIN instruction_embeddings AS e ON e.source_id = s.source_id AND e.model = $model;
