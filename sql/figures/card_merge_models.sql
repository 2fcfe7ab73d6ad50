-- Who merged the groups: backend, model, prompt version and sampling parameters.
SELECT backend, model, prompt_version, sampling_params, count(*) AS groups
FROM merged_samples
GROUP BY ALL ORDER BY groups DESC;
