"""What the assets show: progress in the run's log (and on the `mergeit run` terminal), pictures
and per-partition figures in materialization metadata."""

from __future__ import annotations

import base64

import dagster as dg

from mergeit_core import progress

# A line in the run's log every few percent of a stage: enough to watch, not a flood.
LOG_EVERY_PERCENT = 5


def progress_for(context: dg.AssetExecutionContext) -> progress.ProgressReporter:
    """Reports to the run's log and, when `mergeit run` runs the assets in its own process, to
    its terminal as well."""
    return progress.ProgressReporter(
        progress.LineSink(context.log.info, every_percent=LOG_EVERY_PERCENT), *progress.console_sinks()
    )


def image(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG as markdown with a data: URI; the Dagster UI's markdown allows data: images."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})")
