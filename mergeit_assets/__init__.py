"""Dagster definitions for mergeit: thin assets over mergeit_core."""

import warnings

# The single-run backfill policy is how one run covers every cluster partition; its "beta"
# notice would otherwise repeat in every process that loads the definitions. Matched by message,
# so that importing this package (the `mergeit` command) does not import Dagster.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`")
