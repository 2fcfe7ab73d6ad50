-- Source files with their content hash and row accounting.
SELECT source_file, file_format, size_bytes, content_hash, rows_read, accepted, rejected, duplicate
FROM source_files ORDER BY source_file;
