-- The last full clustering fit, if any.
SELECT fitted_rows, rows_changed_since, seed, n_components, explained_variance
FROM cluster_fit;
