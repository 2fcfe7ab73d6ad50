-- Files whose rows are not all accounted for (read = accepted + rejected + duplicate).
SELECT count(*) FROM source_files WHERE rows_read <> accepted + rejected + duplicate;
