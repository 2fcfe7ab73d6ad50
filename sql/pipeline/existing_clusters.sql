-- Which of the given cluster keys are live clusters.
SELECT cluster_key FROM clusters WHERE list_contains($cluster_keys, cluster_key);
