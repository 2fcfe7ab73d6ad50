"""The counts a run's summary line reports, read from the database alone (no stage imported), so
a rerun that proves nothing changed can print them at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mergeit_core.ingest import IGNORED, SKIPPED
from mergeit_core.store import connect, run_sql

# Rejected rows named on the terminal; the rest are in the rejected_rows table.
REJECTIONS_SHOWN = 5


@dataclass
class RunSummary:
    """What `mergeit run` prints."""

    rows_read: int = 0
    accepted: int = 0
    rejected: int = 0  # rows of rejected_rows: bad records, and files that cannot be read (one each)
    duplicate: int = 0
    clusters: int = 0
    selected: int = 0
    merge_groups: int = 0
    merged: int = 0
    failed: int = 0
    rejected_by_gate: int = 0
    rejected_by_quality: int = 0
    final_rows: int = 0
    skipped_files: int = 0
    ignored_files: int = 0
    gate_reasons: dict[str, int] = field(default_factory=dict)  # reason -> merges it rejected
    first_rejections: list[str] = field(default_factory=list)  # up to REJECTIONS_SHOWN, naming file, row and field
    db_path: str = ""


def summarize(db_path: str | Path) -> RunSummary:
    with connect(db_path) as conn:
        counts = run_sql(conn, "summary/run_counts.sql", {"skipped": SKIPPED, "ignored": IGNORED})
        names = [column[0] for column in counts.description]
        [row] = counts.fetchall()
        gate_reasons = dict(run_sql(conn, "summary/gate_reasons.sql").fetchall())
        rejections = [reason for (reason,) in run_sql(
            conn, "summary/first_rejections.sql", {"limit": REJECTIONS_SHOWN}).fetchall()]
    return RunSummary(
        **{name: int(value) for name, value in zip(names, row)},
        gate_reasons=gate_reasons, first_rejections=rejections, db_path=str(Path(db_path).resolve()),
    )
