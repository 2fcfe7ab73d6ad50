-- source_instructions' metadata preview: the first accepted rows by file and row.
SELECT source_id, source_file, source_row, instruction
FROM source_instructions
ORDER BY source_file, source_row
LIMIT $limit;
