SELECT c.cluster_key, c.centroid, list(t.source_id) AS members
FROM clusters AS c
LEFT JOIN topic_clusters AS t USING (cluster_key)
GROUP BY c.cluster_key, c.centroid
ORDER BY c.cluster_key;
