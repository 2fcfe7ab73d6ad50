-- Some merge groups: the merged sample beside each source row, in prompt order.
SELECT m.group_id, p.member_index, m.instruction, m.input, m.output, s.instruction AS source_instruction,
       s.input AS source_input, s.output AS source_output, s.source_file, s.source_row
FROM merged_samples AS m
JOIN merge_pairs AS p USING (group_id)
JOIN source_instructions AS s ON s.source_id = p.source_id
WHERE list_contains($group_ids, m.group_id)
ORDER BY m.group_id, p.member_index;
