-- The row each accepted source sample came from: a re-ingest keeps it while it is still there.
SELECT source_id, source_file, source_row, source_turn FROM source_instructions;
