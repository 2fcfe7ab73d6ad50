-- Final samples made from a source row that no longer exists are retired with their lineage edges,
-- so lineage never points at a row that is gone. Stale per-cluster rows are replaced when their
-- partitions rerun after re-clustering.
DELETE FROM merged_dataset
WHERE sample_id IN (
    SELECT sample_id FROM sample_sources
    WHERE source_id NOT IN (SELECT source_id FROM source_instructions)
);
DELETE FROM sample_sources
WHERE sample_id NOT IN (SELECT sample_id FROM merged_dataset);
