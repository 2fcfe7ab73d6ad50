-- Size, selected rows and merge groups of some clusters.
SELECT c.cluster_key,
       c.size,
       (SELECT count(*) FROM selected_subset AS s WHERE s.cluster_key = c.cluster_key)                AS selected,
       (SELECT count(DISTINCT p.group_id) FROM merge_pairs AS p WHERE p.cluster_key = c.cluster_key)  AS merge_groups
FROM clusters AS c
WHERE list_contains($cluster_keys, c.cluster_key)
ORDER BY c.cluster_key;
