-- Clusters with at least one merge group's outcome.
SELECT DISTINCT cluster_key FROM merged_samples;
