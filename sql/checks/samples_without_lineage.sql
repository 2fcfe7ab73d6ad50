-- Final samples with no lineage row.
SELECT count(*) FROM merged_dataset AS d
WHERE NOT EXISTS (SELECT 1 FROM lineage AS l WHERE l.sample_id = d.sample_id);
