-- The settings each per-cluster stage ran with, and over how many clusters (runs before
-- settings were recorded show as NULL).
SELECT asset_name, settings, count(*) AS clusters
FROM partition_inputs
GROUP BY ALL ORDER BY asset_name, clusters DESC;
