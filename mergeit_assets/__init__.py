"""Dagster definitions for mergeit: thin assets over mergeit_core."""
