-- Every final sample that used at least one row of a given source file. Bind $source_file.
SELECT DISTINCT d.sample_id, d.origin, d.cluster_key, d.instruction
FROM lineage AS l
JOIN merged_dataset AS d USING (sample_id)
WHERE l.source_file = $source_file
ORDER BY d.sample_id;
