-- Ingest replaces the source tables with what the files hold now (in one transaction).
DELETE FROM source_instructions;
DELETE FROM rejected_rows;
DELETE FROM duplicate_rows;
DELETE FROM source_files;
DELETE FROM skipped_files;
