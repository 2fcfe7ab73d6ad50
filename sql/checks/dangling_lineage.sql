-- Lineage edges pointing at a source row that no longer exists.
SELECT count(*) FROM sample_sources AS s
WHERE s.source_id NOT IN (SELECT source_id FROM source_instructions);
