"""mergeit core: the MergeIT algorithms, IO and DuckDB access as plain Python (no Dagster)."""
