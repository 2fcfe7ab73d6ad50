-- The command line (flags and variables) that found nothing changed: the same one proves it fast.
UPDATE complete_runs SET invocation_hash = $invocation_hash;
