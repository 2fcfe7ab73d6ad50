SELECT count(*) FROM source_instructions;
