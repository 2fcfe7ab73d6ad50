-- The rows of the clusters $cluster_keys in the per-cluster tables named in $tables (a table
-- name is bound as a value here, never formatted into the statement).
DELETE FROM selected_subset WHERE list_contains($tables, 'selected_subset') AND list_contains($cluster_keys, cluster_key);
DELETE FROM merge_pairs WHERE list_contains($tables, 'merge_pairs') AND list_contains($cluster_keys, cluster_key);
DELETE FROM merged_samples WHERE list_contains($tables, 'merged_samples') AND list_contains($cluster_keys, cluster_key);
