"""The numbers behind the pictures, tables and dataset card: read from the DuckDB file, drawn
by plots.py, reported by the assets as metadata and written into the card by card.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mergeit_core import embed
from mergeit_core.store import connect, fetch_table, run_sql

MAP_POINTS = 2000  # rows drawn on the cluster map; a PCA of a sample this size is quick and faithful


@dataclass(frozen=True)
class ClusterMap:
    """Rows projected on the first two principal components of the cluster centres: the plane
    that spreads the clusters apart most (a PCA of the rows themselves mostly shows within-cluster
    spread, since sentence embeddings have no dominant directions)."""

    xy: np.ndarray  # (n, 2)
    cluster_keys: list[str]
    selected: np.ndarray  # (n,) bool: in the current selection
    rows: int  # clustered rows in all; xy holds a sample of at most MAP_POINTS
    explained_variance: tuple[float, float]  # of the centres' variance


def cluster_map(
    db_path: str | Path, *, embedding_backend: str = embed.DEFAULT_BACKEND, max_points: int = MAP_POINTS
) -> ClusterMap:
    with connect(db_path) as conn:
        table = fetch_table(
            conn, "figures/cluster_points.sql", {"model": embed.model_id(embedding_backend), "max_points": max_points}
        )
        [(rows,)] = run_sql(conn, "figures/clustered_row_count.sql").fetchall()
    vectors = table.column("embedding").combine_chunks()
    matrix = (
        vectors.flatten().to_numpy(zero_copy_only=False).reshape(len(vectors), -1).astype(np.float64)
        if len(vectors) else np.zeros((0, embed.EMBEDDING_DIM))
    )
    cluster_keys = table.column("cluster_key").to_pylist()
    xy, explained = _centre_pca_2d(matrix, np.array(cluster_keys))
    return ClusterMap(
        xy=xy,
        cluster_keys=cluster_keys,
        selected=np.asarray(table.column("selected").to_pylist(), dtype=bool),
        rows=rows,
        explained_variance=explained,
    )


def _centre_pca_2d(matrix: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Project the rows on the top two principal axes of their clusters' centres (of the rows
    themselves when there are fewer than three clusters)."""
    if len(matrix) < 2:
        return np.zeros((len(matrix), 2)), (0.0, 0.0)
    keys = sorted(set(labels.tolist()))
    basis = np.stack([matrix[labels == key].mean(axis=0) for key in keys]) if len(keys) >= 3 else matrix
    mean = basis.mean(axis=0)
    _, singular, components = np.linalg.svd(basis - mean, full_matrices=False)
    variance = singular**2
    share = variance / variance.sum() if variance.sum() > 0 else variance
    top = min(2, len(singular))
    xy = np.zeros((len(matrix), 2))
    xy[:, :top] = (matrix - mean) @ components[:top].T
    return xy, (float(share[0]), float(share[1]) if top > 1 else 0.0)


def cluster_sizes(db_path: str | Path) -> dict[str, int]:
    with connect(db_path) as conn:
        return dict(run_sql(conn, "figures/cluster_sizes.sql").fetchall())


@dataclass(frozen=True)
class Funnel:
    rows_read: int
    accepted: int
    selected: int
    merge_groups: int
    merged: int  # merged samples in the final dataset
    rows_in_merges: int  # selected rows those merged samples replace
    kept_selected: int  # selected rows kept as they are
    final_rows: int


def funnel(db_path: str | Path) -> Funnel:
    with connect(db_path) as conn:
        result = run_sql(conn, "figures/funnel.sql")
        columns = [d[0] for d in result.description]
        return Funnel(**{name: int(value) for name, value in zip(columns, result.fetchall()[0])})


@dataclass(frozen=True)
class MergeOutcomeRow:
    group_id: str
    cluster_key: str
    status: str
    reason: str  # "merged", or why the merge was not kept


def merge_outcomes(db_path: str | Path, cluster_keys: Sequence[str] | None = None) -> list[MergeOutcomeRow]:
    """Every merge group's outcome in the given clusters (all clusters when None). Statuses are
    counted as they come: a merge gate may add its own (with a ``gate_reason`` column)."""
    with connect(db_path) as conn:
        if cluster_keys is None:
            cluster_keys = [key for (key,) in run_sql(conn, "figures/merged_clusters.sql").fetchall()]
        result = run_sql(conn, "figures/merge_outcomes.sql", {"cluster_keys": list(cluster_keys)})
        columns = [d[0] for d in result.description]
        rows = [dict(zip(columns, row)) for row in result.fetchall()]
    return [
        MergeOutcomeRow(row["group_id"], row["cluster_key"], row["status"], outcome_reason(row))
        for row in rows
    ]


def outcome_reason(row: dict) -> str:
    status = row["status"]
    if status == "merged":
        return "merged"
    if row.get("gate_reason"):
        return f"{status}: {row['gate_reason']}"
    if status == "failed" and row.get("error"):
        return f"failed: {row['error'].split(':', 1)[0]}"
    return status


def reason_counts(outcomes: Sequence[MergeOutcomeRow]) -> dict[str, int]:
    """Groups per reason, merged first, then the most frequent."""
    counts = Counter(outcome.reason for outcome in outcomes)
    return dict(sorted(counts.items(), key=lambda item: (item[0] != "merged", -item[1], item[0])))


@dataclass(frozen=True)
class ClusterFigures:
    cluster_key: str
    size: int
    selected: int
    merge_groups: int
    statuses: dict[str, int]
    reasons: dict[str, int]  # groups not kept, by reason


def cluster_figures(db_path: str | Path, cluster_keys: Sequence[str]) -> dict[str, ClusterFigures]:
    with connect(db_path) as conn:
        rows = run_sql(conn, "figures/cluster_figures.sql", {"cluster_keys": list(cluster_keys)}).fetchall()
    outcomes = merge_outcomes(db_path, cluster_keys)
    figures = {}
    for key, size, selected, groups in rows:
        mine = [o for o in outcomes if o.cluster_key == key]
        figures[key] = ClusterFigures(
            cluster_key=key,
            size=size,
            selected=selected,
            merge_groups=groups,
            statuses=dict(Counter(o.status for o in mine)),
            reasons={reason: n for reason, n in reason_counts(mine).items() if reason != "merged"},
        )
    return figures


def side_by_side_per_cluster(
    db_path: str | Path, cluster_keys: Sequence[str], *, kept: int = 2, not_kept: int = 2, width: int = 160
) -> dict[str, str]:
    """Per cluster, a markdown table: a few merges (kept ones, then ones not kept with the reason)
    beside the source rows they were made from. Two queries for all the clusters: a run may
    cover hundreds, and a connection per cluster cost more than the tables."""
    chosen_by_key: dict[str, list[MergeOutcomeRow]] = {key: [] for key in cluster_keys}
    outcomes = merge_outcomes(db_path, cluster_keys)
    for merged in (True, False):
        limit = kept if merged else not_kept
        for outcome in outcomes:
            mine = chosen_by_key[outcome.cluster_key]
            if (outcome.status == "merged") == merged and sum((o.status == "merged") == merged for o in mine) < limit:
                mine.append(outcome)
    group_ids = [o.group_id for chosen in chosen_by_key.values() for o in chosen]
    rows = []
    if group_ids:
        with connect(db_path) as conn:
            rows = run_sql(conn, "figures/merges_with_sources.sql", {"group_ids": group_ids}).fetchall()
    merged_text: dict[str, str] = {}
    sources: dict[str, list[str]] = {}
    for group_id, _, instruction, input_, output, source_instruction, source_input, source_output, source_file, source_row in rows:
        merged_text[group_id] = _sample_cell(instruction, input_, output, width) if instruction is not None else "–"
        sources.setdefault(group_id, []).append(
            _sample_cell(source_instruction, source_input, source_output, width)
            + f" <sub>{Path(source_file).name}:{source_row}</sub>"
        )
    return {key: _side_by_side_table(chosen, merged_text, sources) for key, chosen in chosen_by_key.items()}


def _side_by_side_table(
    chosen: Sequence[MergeOutcomeRow], merged_text: dict[str, str], sources: dict[str, list[str]]
) -> str:
    if not chosen:
        return "_no merge groups in these clusters_"
    members = max((len(sources.get(o.group_id, [])) for o in chosen), default=2) or 2
    header = ["outcome", "merged sample"] + [f"source {i + 1}" for i in range(members)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for outcome in chosen:
        cells = sources.get(outcome.group_id, [])
        cells = cells + [""] * (members - len(cells))
        lines.append(
            "| " + " | ".join([
                _escape(f"{outcome.reason} ({outcome.cluster_key})"), merged_text.get(outcome.group_id, "–"), *cells
            ]) + " |"
        )
    return "\n".join(lines)


def _sample_cell(instruction: str, input_: str | None, output: str, width: int) -> str:
    given = f" _{_escape(_clip(input_, width))}_" if input_ else ""
    return f"**{_escape(_clip(instruction, width))}**{given} → {_escape(_clip(output, width))}"


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_").replace("<", "&lt;")
