UPDATE cluster_fit SET rows_changed_since = $rows_changed_since;
