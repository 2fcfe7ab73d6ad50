"""The counts a run's summary line reports, read from the database alone (no stage imported), so
a rerun that proves nothing changed can print them at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mergeit_core.ingest import IGNORED, SKIPPED
from mergeit_core.store import connect


@dataclass
class RunSummary:
    """What `mergeit run` prints."""

    rows_read: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicate: int = 0
    clusters: int = 0
    selected: int = 0
    merge_groups: int = 0
    merged: int = 0
    failed: int = 0
    rejected_by_gate: int = 0
    gate_reasons: dict[str, int] = field(default_factory=dict)  # reason -> merges it rejected
    rejected_by_quality: int = 0
    final_rows: int = 0
    skipped_files: int = 0
    ignored_files: int = 0
    db_path: str = ""


def summarize(db_path: str | Path) -> RunSummary:
    with connect(db_path) as conn:
        files = conn.execute(
            "SELECT coalesce(sum(rows_read),0), coalesce(sum(accepted),0), coalesce(sum(rejected),0), "
            "coalesce(sum(duplicate),0) FROM source_files"
        ).fetchall()[0]
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM clusters), (SELECT count(*) FROM selected_subset), "
            "(SELECT count(DISTINCT group_id) FROM merge_pairs), (SELECT count(*) FROM merged_dataset)"
        ).fetchall()[0]
        statuses = dict(conn.execute("SELECT status, count(*) FROM merged_samples GROUP BY status").fetchall())
        not_read = dict(conn.execute("SELECT status, count(*) FROM skipped_files GROUP BY status").fetchall())
        gate_reasons = dict(conn.execute(
            "SELECT gate_reason, count(*) FROM merged_samples WHERE status = 'rejected' "
            "GROUP BY gate_reason ORDER BY count(*) DESC, gate_reason"
        ).fetchall())
    return RunSummary(
        rows_read=int(files[0]), accepted=int(files[1]), rejected=int(files[2]), duplicate=int(files[3]),
        clusters=counts[0], selected=counts[1], merge_groups=counts[2],
        merged=statuses.get("merged", 0), failed=statuses.get("failed", 0),
        rejected_by_gate=statuses.get("rejected", 0), gate_reasons=gate_reasons,
        rejected_by_quality=statuses.get("rejected_by_quality", 0),
        final_rows=counts[3], skipped_files=not_read.get(SKIPPED, 0), ignored_files=not_read.get(IGNORED, 0),
        db_path=str(Path(db_path).resolve()),
    )

