-- Some clusters' current selections that may be kept: made with these settings after the last
-- full clustering fit (a refit can move any row, so older selections are made afresh).
SELECT s.cluster_key, s.source_id, s.marginal_gain
FROM selected_subset AS s
JOIN partition_inputs AS p ON p.asset_name = 'selected_subset' AND p.cluster_key = s.cluster_key
WHERE list_contains($cluster_keys, s.cluster_key)
  AND p.settings = $settings
  AND p.materialized_at >= (SELECT max(fitted_at) FROM cluster_fit)
ORDER BY s.cluster_key, s.selection_rank;
