-- The sample the dataset card's lineage example names: a merged one when there is one.
SELECT coalesce(min(sample_id) FILTER (WHERE origin = 'merged'), min(sample_id), 'SAMPLE_ID') FROM merged_dataset;
