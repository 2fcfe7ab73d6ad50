-- One final sample by id (`mergeit lineage` prints it above its sources).
SELECT sample_id, origin, cluster_key, instruction, input, output FROM merged_dataset WHERE sample_id = $sample_id;
