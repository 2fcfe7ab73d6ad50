INSERT INTO complete_runs VALUES ($run_id, $sources_hash, $settings_hash, $database_stamp, $finished_at, $invocation_hash);
