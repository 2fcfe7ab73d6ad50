SELECT count(*) FROM merged_dataset;
