-- Each merge group's outcome in some clusters. gate_reason exists only where a merge gate
-- writes it: COLUMNS picks whichever of these columns the table has.
SELECT COLUMNS(lambda c: c IN ('group_id', 'cluster_key', 'status', 'error', 'gate_reason'))
FROM merged_samples
WHERE list_contains($cluster_keys, cluster_key)
ORDER BY group_id;
