-- The last run that completed every stage, and what it was computed from.
SELECT run_id, sources_hash, settings_hash, database_stamp, finished_at, invocation_hash FROM complete_runs;
