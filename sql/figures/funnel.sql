-- Rows at each step from the source files to the final dataset.
SELECT
    (SELECT coalesce(sum(rows_read), 0) FROM source_files)                       AS rows_read,
    (SELECT count(*) FROM source_instructions)                                   AS accepted,
    (SELECT count(*) FROM selected_subset)                                       AS selected,
    (SELECT count(DISTINCT group_id) FROM merge_pairs)                           AS merge_groups,
    (SELECT count(*) FROM merged_dataset WHERE origin = 'merged')                AS merged,
    (SELECT count(*) FROM sample_sources JOIN merged_dataset USING (sample_id)
      WHERE origin = 'merged')                                                   AS rows_in_merges,
    (SELECT count(*) FROM merged_dataset WHERE origin = 'selected')              AS kept_selected,
    (SELECT count(*) FROM merged_dataset)                                        AS final_rows;
