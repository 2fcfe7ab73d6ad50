-- Row-level provenance: every final sample beside each source row behind it.
CREATE OR REPLACE VIEW lineage AS
SELECT
    d.sample_id,
    d.origin,
    s.source_id,
    si.source_file,
    si.source_row,
    d.cluster_key,
    d.group_id,
    m.model,
    m.backend,
    m.prompt_version,
    m.sampling_params,
    m.run_id        AS merge_run_id,
    m.partition_key AS merge_partition,
    d.run_id        AS dataset_run_id
FROM merged_dataset AS d
JOIN sample_sources AS s USING (sample_id)
JOIN source_instructions AS si USING (source_id)
LEFT JOIN merged_samples AS m ON m.group_id = d.group_id;

-- Every file row behind a source_id, duplicates included (a repeated row is still provenance).
CREATE OR REPLACE VIEW source_occurrences AS
SELECT source_id, source_file, source_row, FALSE AS is_duplicate FROM source_instructions
UNION ALL
SELECT source_id, source_file, source_row, TRUE AS is_duplicate FROM duplicate_rows;

-- Per-file accounting: read = accepted + rejected + duplicate.
CREATE OR REPLACE VIEW source_accounting AS
SELECT source_file, file_format, rows_read, accepted, rejected, duplicate,
       rows_read = accepted + rejected + duplicate AS balanced
FROM source_files;
