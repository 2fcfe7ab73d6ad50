"""Asset checks: the accounting and lineage invariants, as SQL over the DuckDB file."""

import dagster as dg

from mergeit_assets.assets.merging import merged_dataset
from mergeit_assets.assets.selection import instruction_embeddings, source_instructions
from mergeit_assets.resources import MergeitDuckDB, PipelineSettings
from mergeit_core import embed
from mergeit_core.store import run_sql


def _violations(duckdb: MergeitDuckDB, check: str, params: dict | None = None) -> int:
    with duckdb.get_connection() as conn:
        return int(run_sql(conn, f"checks/{check}.sql", params).fetchall()[0][0])


def _result(counts: dict[str, int]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=not any(counts.values()), metadata=counts)


@dg.asset_check(asset=source_instructions, description="Every source row is accepted, rejected or a duplicate.")
def source_rows_accounted(duckdb: MergeitDuckDB) -> dg.AssetCheckResult:
    return _result({"unbalanced_files": _violations(duckdb, "unbalanced_files")})


@dg.asset_check(asset=instruction_embeddings, description="Every source row has an embedding.")
def every_row_embedded(duckdb: MergeitDuckDB, pipeline: PipelineSettings) -> dg.AssetCheckResult:
    model = embed.model_id(pipeline.embedding_backend)
    return _result({"rows_without_embedding": _violations(duckdb, "rows_without_embedding", {"model": model})})


@dg.asset_check(
    asset=merged_dataset,
    description="Every sample has lineage, lineage never dangles, each selected row is in exactly one sample.",
)
def lineage_complete(duckdb: MergeitDuckDB) -> dg.AssetCheckResult:
    return _result({
        name: _violations(duckdb, name)
        for name in ("samples_without_lineage", "dangling_lineage", "selected_not_in_exactly_one_sample")
    })
