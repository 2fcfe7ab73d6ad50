-- Merge groups a rerun would ask the LLM again: failed without a cached answer (the LLM gave none).
SELECT count(*)
FROM merged_samples AS m
WHERE m.status = 'failed'
  AND NOT EXISTS (SELECT 1 FROM llm_cache AS c WHERE c.cache_key = m.cache_key);
