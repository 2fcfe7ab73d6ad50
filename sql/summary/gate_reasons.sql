-- Merges the merge gate rejected, by reason, most frequent first.
SELECT gate_reason, count(*) AS merges
FROM merged_samples
WHERE status = 'rejected'
GROUP BY gate_reason
ORDER BY merges DESC, gate_reason;
