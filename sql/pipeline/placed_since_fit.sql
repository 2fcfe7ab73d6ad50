-- Rows placed at their nearest centroid since the last full fit.
SELECT source_id FROM topic_clusters WHERE placed_since_fit;
