-- One cluster's merge groups with their members' content, members in group order.
SELECT p.group_id, p.source_id, si.instruction, si.input, si.output
FROM merge_pairs AS p
JOIN source_instructions AS si USING (source_id)
WHERE p.cluster_key = $cluster_key
ORDER BY p.group_id, p.member_index;
