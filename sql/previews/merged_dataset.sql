-- merged_dataset's metadata preview: merged samples first.
SELECT sample_id, origin, instruction
FROM merged_dataset
ORDER BY origin, sample_id
LIMIT $limit;
