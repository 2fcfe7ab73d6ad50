-- Clusters that no longer exist: no partition records what it was computed from.
DELETE FROM partition_inputs WHERE list_contains($cluster_keys, cluster_key);
