-- The merged dataset in Alpaca format, in sample_id order (row n of an export is the n-th sample_id).
SELECT instruction, input, output FROM merged_dataset ORDER BY sample_id;
