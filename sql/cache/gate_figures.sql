-- The merge gate's figures stored for these answers' cache keys under one figures version.
SELECT cache_key, figures
FROM gate_figures
WHERE figures_version = $figures_version AND cache_key IN (SELECT UNNEST($cache_keys::VARCHAR[]));
