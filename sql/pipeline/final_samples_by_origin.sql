-- merged_dataset's rows by origin ('merged' or 'selected'), and the source rows behind them.
SELECT
    (SELECT count(*) FILTER (WHERE origin = 'merged') FROM merged_dataset) AS merged,
    (SELECT count(*) FILTER (WHERE origin = 'selected') FROM merged_dataset) AS selected,
    (SELECT count(*) FROM source_instructions) AS source_rows;
