-- Which membership of the cluster an asset's partition was computed from, and with which
-- settings (the dataset card reports them).
DELETE FROM partition_inputs WHERE asset_name = $asset_name AND cluster_key = $cluster_key;
INSERT INTO partition_inputs (asset_name, cluster_key, input_hash, run_id, materialized_at, settings)
SELECT $asset_name, cluster_key, membership_hash, $run_id, $materialized_at, $settings
FROM clusters
WHERE cluster_key = $cluster_key;
