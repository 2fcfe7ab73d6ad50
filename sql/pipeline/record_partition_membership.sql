-- Which membership of each cluster in $cluster_keys an asset's partition was computed from, and
-- with which settings (the dataset card reports them).
DELETE FROM partition_inputs WHERE asset_name = $asset_name AND list_contains($cluster_keys, cluster_key);
INSERT INTO partition_inputs (asset_name, cluster_key, input_hash, run_id, materialized_at, settings)
SELECT $asset_name, cluster_key, membership_hash, $run_id, $materialized_at, $settings
FROM clusters
WHERE list_contains($cluster_keys, cluster_key);
