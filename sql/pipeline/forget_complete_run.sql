DELETE FROM complete_runs;
