-- Cached LLM answers for these cache keys.
SELECT cache_key, response, valid, prompt_tokens, completion_tokens, finish_reason
FROM llm_cache
WHERE cache_key IN (SELECT UNNEST($cache_keys::VARCHAR[]));
