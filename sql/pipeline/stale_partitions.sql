-- Live clusters where any per-cluster asset was last computed from another membership, or never.
SELECT c.cluster_key
FROM clusters AS c
CROSS JOIN unnest($assets) AS a(asset_name)
LEFT JOIN partition_inputs AS p ON p.cluster_key = c.cluster_key AND p.asset_name = a.asset_name
GROUP BY c.cluster_key
HAVING bool_or(p.input_hash IS DISTINCT FROM c.membership_hash)
ORDER BY c.cluster_key;
