-- After re-clustering: a row that left its cluster (moved or retired) leaves that cluster's
-- selection, and any merge group it was in is dissolved. The cluster's partitions are stale and
-- rerun; until then nothing claims the row twice.
DELETE FROM selected_subset AS s
WHERE NOT EXISTS (
    SELECT 1 FROM topic_clusters AS t WHERE t.source_id = s.source_id AND t.cluster_key = s.cluster_key
);
DELETE FROM merge_pairs
WHERE group_id IN (
    SELECT p.group_id FROM merge_pairs AS p
    LEFT JOIN selected_subset AS s ON s.source_id = p.source_id AND s.cluster_key = p.cluster_key
    WHERE s.source_id IS NULL
);
DELETE FROM merged_samples
WHERE group_id NOT IN (SELECT group_id FROM merge_pairs);
