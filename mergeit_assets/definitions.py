"""`dagster dev` entry point: `mergeit_assets.definitions:defs`."""

import dagster as dg

from mergeit_assets.assets import merging, selection
from mergeit_assets.checks import every_row_embedded, lineage_complete, source_rows_accounted
from mergeit_assets.resources import default_resources

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([selection, merging]),
    asset_checks=[source_rows_accounted, every_row_embedded, lineage_complete],
    resources=default_resources(),
)
