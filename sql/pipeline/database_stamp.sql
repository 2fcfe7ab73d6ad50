-- What any stage's write changes: ingest rewrites source_files, re-clustering rewrites clusters,
-- each per-cluster partition rewrites its partition_inputs row, the dataset carries its run id.
SELECT
    (SELECT count(*) FROM source_files), (SELECT max(ingested_at) FROM source_files),
    (SELECT count(*) FROM instruction_embeddings),
    (SELECT count(*) FROM clusters), (SELECT max(updated_at) FROM clusters),
    (SELECT count(*) FROM partition_inputs), (SELECT max(materialized_at) FROM partition_inputs),
    (SELECT count(*) FROM merged_samples), (SELECT max(created_at) FROM merged_samples),
    (SELECT count(*) FROM merged_dataset), (SELECT min(run_id) FROM merged_dataset),
    (SELECT max(run_id) FROM merged_dataset);
