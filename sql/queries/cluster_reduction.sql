-- Per-cluster reduction: source rows -> selected -> merge groups -> final samples.
SELECT c.cluster_key,
       c.size AS source_rows,
       (SELECT count(*) FROM selected_subset s WHERE s.cluster_key = c.cluster_key) AS selected,
       (SELECT count(DISTINCT group_id) FROM merge_pairs p WHERE p.cluster_key = c.cluster_key) AS merge_groups,
       (SELECT count(*) FROM merged_samples m WHERE m.cluster_key = c.cluster_key AND m.status = 'merged') AS merged,
       (SELECT count(*) FROM merged_dataset d WHERE d.cluster_key = c.cluster_key) AS final_samples,
       round((SELECT count(*) FROM merged_dataset d WHERE d.cluster_key = c.cluster_key) / c.size, 3) AS kept_ratio
FROM clusters AS c
ORDER BY c.cluster_key;
