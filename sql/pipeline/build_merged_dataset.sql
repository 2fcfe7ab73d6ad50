-- The final training set: each kept merge, plus each selected row that is inside no kept merge.
-- A merge counts only while every member is still selected in the same cluster.
CREATE OR REPLACE TEMP TABLE kept_merges AS
SELECT m.group_id, m.cluster_key, m.instruction, m.input, m.output
FROM merged_samples AS m
WHERE m.status = 'merged'
  AND NOT EXISTS (
      SELECT 1 FROM merge_pairs AS p
      LEFT JOIN selected_subset AS s ON s.source_id = p.source_id AND s.cluster_key = p.cluster_key
      WHERE p.group_id = m.group_id AND (s.source_id IS NULL OR p.cluster_key <> m.cluster_key)
  )
  AND EXISTS (SELECT 1 FROM merge_pairs AS p WHERE p.group_id = m.group_id);

DELETE FROM sample_sources;
DELETE FROM merged_dataset;

INSERT INTO merged_dataset (sample_id, origin, cluster_key, group_id, instruction, input, output, run_id)
SELECT 'm' || substr(group_id, 2), 'merged', cluster_key, group_id, instruction, input, output, $run_id
FROM kept_merges;

INSERT INTO sample_sources (sample_id, source_id)
SELECT 'm' || substr(k.group_id, 2), p.source_id
FROM kept_merges AS k JOIN merge_pairs AS p USING (group_id);

INSERT INTO merged_dataset (sample_id, origin, cluster_key, group_id, instruction, input, output, run_id)
SELECT 's' || s.source_id, 'selected', s.cluster_key, NULL, si.instruction, si.input, si.output, $run_id
FROM selected_subset AS s
JOIN source_instructions AS si USING (source_id)
WHERE s.source_id NOT IN (SELECT source_id FROM merge_pairs WHERE group_id IN (SELECT group_id FROM kept_merges));

INSERT INTO sample_sources (sample_id, source_id)
SELECT 's' || s.source_id, s.source_id
FROM selected_subset AS s
WHERE s.source_id NOT IN (SELECT source_id FROM merge_pairs WHERE group_id IN (SELECT group_id FROM kept_merges));

DROP TABLE kept_merges;
