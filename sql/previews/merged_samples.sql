-- merged_samples' preview per cluster partition: each cluster's first groups (the key column
-- comes first; the caller drops it).
SELECT cluster_key, group_id, status, instruction, error
FROM merged_samples
WHERE list_contains($cluster_keys, cluster_key)
QUALIFY row_number() OVER (PARTITION BY cluster_key ORDER BY group_id) <= $limit
ORDER BY cluster_key, group_id;
