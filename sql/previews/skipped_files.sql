-- source_instructions' preview of the files not read: skipped types first, then ignored names.
SELECT source_file, status, reason
FROM skipped_files
ORDER BY status DESC, source_file
LIMIT $limit;
