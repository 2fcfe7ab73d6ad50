-- Which source rows, from which file and line, made this training sample, with which model,
-- prompt version and run? Bind $sample_id.
SELECT l.sample_id, l.origin, l.source_id, l.source_file, l.source_row,
       si.instruction, si.input, si.output,
       l.model, l.prompt_version, l.sampling_params, l.merge_run_id, l.merge_partition
FROM lineage AS l
JOIN source_instructions AS si USING (source_id)
WHERE l.sample_id = $sample_id
ORDER BY l.source_file, l.source_row;
