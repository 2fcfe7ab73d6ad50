-- Some clusters' current merge groups, where they were paired with these settings (groups made
-- with another threshold or group size are not kept).
SELECT m.cluster_key, list(m.source_id ORDER BY m.member_index) AS members
FROM merge_pairs AS m
JOIN partition_inputs AS p ON p.asset_name = 'merge_pairs' AND p.cluster_key = m.cluster_key
WHERE list_contains($cluster_keys, m.cluster_key) AND p.settings = $settings
GROUP BY m.cluster_key, m.group_id
ORDER BY m.cluster_key, m.group_id;
