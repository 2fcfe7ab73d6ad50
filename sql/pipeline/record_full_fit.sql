-- The last full clustering fit: a small change since is placed without a refit.
DELETE FROM cluster_fit;
INSERT INTO cluster_fit VALUES ($rows, $rows_changed_since, $seed, $n_components, $explained_variance, $fitted_at);
