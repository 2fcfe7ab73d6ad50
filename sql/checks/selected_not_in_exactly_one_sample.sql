-- Selected source rows that are in no final sample, or in more than one.
SELECT count(*) FROM selected_subset AS sel
LEFT JOIN (SELECT source_id, count(*) AS n FROM sample_sources GROUP BY source_id) AS used USING (source_id)
WHERE coalesce(used.n, 0) <> 1;
