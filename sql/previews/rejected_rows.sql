-- source_instructions' rejections preview: bad records and unreadable files, by file and row.
SELECT source_file, source_row, field, reason
FROM rejected_rows
ORDER BY source_file, source_row
LIMIT $limit;
