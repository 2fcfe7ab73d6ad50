-- The first rejected source rows (file, then row; a whole-file rejection first), each reason
-- naming file, row and field.
SELECT reason
FROM rejected_rows
ORDER BY source_file, source_row NULLS FIRST, source_turn NULLS FIRST
LIMIT $limit;
