"""Dagster definitions for mergeit: thin assets over mergeit_core."""

import warnings

import dagster as dg

# The single-run backfill policy is how one run covers every cluster partition; its "beta"
# notice would otherwise repeat in every process that loads the definitions.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message="Parameter `backfill_policy`")
