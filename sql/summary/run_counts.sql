-- The counts of `mergeit run`'s summary line, in one row.
SELECT
    (SELECT coalesce(sum(rows_read), 0) FROM source_files) AS rows_read,
    (SELECT coalesce(sum(accepted), 0) FROM source_files) AS accepted,
    (SELECT coalesce(sum(rejected), 0) FROM source_files) AS rejected,
    (SELECT coalesce(sum(duplicate), 0) FROM source_files) AS duplicate,
    (SELECT count(*) FROM clusters) AS clusters,
    (SELECT count(*) FROM selected_subset) AS selected,
    (SELECT count(DISTINCT group_id) FROM merge_pairs) AS merge_groups,
    (SELECT count(*) FILTER (WHERE status = 'merged') FROM merged_samples) AS merged,
    (SELECT count(*) FILTER (WHERE status = 'failed') FROM merged_samples) AS failed,
    (SELECT count(*) FILTER (WHERE status = 'rejected') FROM merged_samples) AS rejected_by_gate,
    (SELECT count(*) FILTER (WHERE status = 'rejected_by_quality') FROM merged_samples) AS rejected_by_quality,
    (SELECT count(*) FROM merged_dataset) AS final_rows,
    (SELECT count(*) FILTER (WHERE status = $skipped) FROM skipped_files) AS skipped_files,
    (SELECT count(*) FILTER (WHERE status = $ignored) FROM skipped_files) AS ignored_files;
