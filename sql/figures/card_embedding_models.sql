-- The embedding model(s) behind the current source rows.
SELECT e.model, count(*) AS rows
FROM source_instructions AS s JOIN instruction_embeddings AS e USING (source_id)
GROUP BY e.model ORDER BY rows DESC;
