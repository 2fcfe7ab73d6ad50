-- The files the last ingest read, with the sha256 of the bytes it read: what the database holds.
SELECT source_file, size_bytes, content_hash
FROM source_files
ORDER BY source_file;
