"""The pipeline's stages as plain functions over one DuckDB file.

Each stage reads what it needs in a short connection, computes outside DuckDB, then writes its
result in one short transaction (delete the rows it owns, insert, commit). DuckDB admits one
writing process per file, so runs of different partitions take turns at the lock and none holds
it while computing or waiting on an LLM.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from mergeit_core import cluster as clustering
from mergeit_core import embed, pairing, select
from mergeit_core.ingest import IGNORED, SKIPPED, FileSummary, IngestResult, ingest_sources
from mergeit_core.progress import NO_PROGRESS, ProgressReporter
from mergeit_core.records import Sample, group_id
from mergeit_core.store import connect, embedding_array, fetch_table, insert_columns, run_sql, transaction


def now_utc() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _matrix(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """A FLOAT[d] column as a float32 (n, d) matrix."""
    values = table.column(column).combine_chunks()
    if len(values) == 0:
        return np.zeros((0, embed.EMBEDDING_DIM), dtype=np.float32)
    return values.flatten().to_numpy(zero_copy_only=False).reshape(len(values), -1).astype(np.float32)


def settings_json(settings: Mapping[str, object]) -> str:
    """Settings as partition_inputs stores them, so equal settings compare equal in SQL."""
    return json.dumps(dict(settings), sort_keys=True)


# --- source_instructions -------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestStats:
    files: int
    rows_read: int
    accepted: int
    rejected: int
    duplicate: int
    retired_samples: int
    skipped_files: int  # in a source folder, not a source (e.g. notes.txt)
    ignored_files: int  # hidden or still being written: not read on purpose


def ingest(
    db_path: str | Path, sources: Sequence[str | Path], *, progress: ProgressReporter = NO_PROGRESS
) -> tuple[IngestStats, IngestResult]:
    """Replace the source tables with what the configured files hold now; final samples made
    from rows that disappeared are retired in the same transaction. A sample keeps the source
    row it was accepted from while that row is still there, so its lineage does not move."""
    with connect(db_path) as conn:
        previous_owners = {
            source_id: (source_file, source_row, source_turn)
            for source_id, source_file, source_row, source_turn in run_sql(conn, "pipeline/source_owners.sql").fetchall()
        }
    tracker = progress.stage("read", total=None, unit="files")
    read = {"rows_read": 0, "accepted": 0, "rejected": 0, "duplicate": 0}

    def file_read(summary: FileSummary) -> None:
        for name in read:
            read[name] += getattr(summary, name)
        tracker.advance(1, **read)

    result = ingest_sources(sources, previous_owners, on_file=file_read)
    tracker.finish()
    now = now_utc()
    accepted, rejected, duplicates = result.accepted, result.rejected, result.duplicates
    with connect(db_path) as conn, transaction(conn):
        run_sql(conn, "pipeline/clear_sources.sql")
        insert_columns(conn, "source_instructions", {
            "source_id": [r.source_id for r in accepted],
            "source_file": [r.source_file for r in accepted],
            "source_row": pa.array([r.source_row for r in accepted], pa.int32()),
            "source_turn": pa.array([r.source_turn for r in accepted], pa.int32()),
            "instruction": [r.sample.instruction for r in accepted],
            "input": [r.sample.input for r in accepted],
            "output": [r.sample.output for r in accepted],
            "ingested_at": pa.array([now] * len(accepted), pa.timestamp("us")),
        })
        insert_columns(conn, "rejected_rows", {
            "source_file": [r.source_file for r in rejected],
            "source_row": pa.array([r.source_row for r in rejected], pa.int32()),
            "source_turn": pa.array([r.source_turn for r in rejected], pa.int32()),
            "field": pa.array([r.field for r in rejected], pa.string()),
            "reason": [r.reason for r in rejected],
        })
        insert_columns(conn, "duplicate_rows", {
            "source_file": [r.source_file for r in duplicates],
            "source_row": pa.array([r.source_row for r in duplicates], pa.int32()),
            "source_turn": pa.array([r.source_turn for r in duplicates], pa.int32()),
            "source_id": [r.source_id for r in duplicates],
        })
        insert_columns(conn, "source_files", {
            "source_file": [f.source_file for f in result.files],
            "file_format": [f.file_format for f in result.files],
            "size_bytes": pa.array([f.size_bytes for f in result.files], pa.int64()),
            "content_hash": [f.content_hash for f in result.files],
            "rows_read": pa.array([f.rows_read for f in result.files], pa.int32()),
            "accepted": pa.array([f.accepted for f in result.files], pa.int32()),
            "rejected": pa.array([f.rejected for f in result.files], pa.int32()),
            "duplicate": pa.array([f.duplicate for f in result.files], pa.int32()),
            "ingested_at": pa.array([now] * len(result.files), pa.timestamp("us")),
        })
        insert_columns(conn, "skipped_files", {
            "source_file": [f.source_file for f in result.skipped],
            "status": [f.status for f in result.skipped],
            "reason": [f.reason for f in result.skipped],
            "ingested_at": pa.array([now] * len(result.skipped), pa.timestamp("us")),
        })
        [(samples_before,)] = run_sql(conn, "pipeline/final_sample_count.sql").fetchall()
        run_sql(conn, "pipeline/retire_missing_sources.sql")
        [(samples_after,)] = run_sql(conn, "pipeline/final_sample_count.sql").fetchall()
        retired = samples_before - samples_after
    stats = IngestStats(
        files=len(result.files),
        rows_read=sum(f.rows_read for f in result.files),
        accepted=len(accepted),
        rejected=len(rejected),
        duplicate=len(duplicates),
        retired_samples=retired,
        skipped_files=sum(f.status == SKIPPED for f in result.skipped),
        ignored_files=sum(f.status == IGNORED for f in result.skipped),
    )
    return stats, result


# --- instruction_embeddings ----------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedStats:
    embedded: int
    total: int
    seconds: float


def embed_missing(
    db_path: str | Path,
    *,
    batch_size: int | None = None,
    chunk_size: int = 4096,
    embedding_backend: str = embed.DEFAULT_BACKEND,
    progress: ProgressReporter = NO_PROGRESS,
) -> EmbedStats:
    """Embed only the source rows that have no embedding for the backend's model yet, committing
    each chunk so an interrupted run keeps what it paid for.

    The rows are sorted by text length, longest first, across all chunks, so every batch holds
    texts of nearly one length, as in a single ``encode`` call: sorting within 4,096-row chunks
    alone padded enough to cost 12% more encode time (8,192 synthetic rows: 103 s against 92 s).
    """
    started = time.perf_counter()
    model = embed.model_id(embedding_backend)
    with connect(db_path) as conn:
        rows = run_sql(conn, "pipeline/texts_to_embed.sql", {"model": model}).fetchall()
        [(total,)] = run_sql(conn, "pipeline/source_row_count.sql").fetchall()
    pending = sorted(
        ((source_id, Sample(instruction, input_, "").embedding_text) for source_id, instruction, input_ in rows),
        key=lambda row: -len(row[1]),
    )
    tracker = progress.stage("embed", total=len(pending), unit="rows")
    for start in range(0, len(pending), chunk_size):
        chunk = pending[start:start + chunk_size]
        vectors = embed.embed_texts(
            [text for _, text in chunk],
            batch_size=batch_size,
            backend=embedding_backend,
            on_progress=lambda done, offset=start: tracker.update(offset + done),
        )
        with connect(db_path) as conn, transaction(conn):
            insert_columns(conn, "instruction_embeddings", {
                "source_id": [source_id for source_id, _ in chunk],
                "model": [model] * len(chunk),
                "embedding": embedding_array(vectors),
                "embedded_at": pa.array([now_utc()] * len(chunk), pa.timestamp("us")),
            })
    tracker.finish(already_embedded=total - len(pending))
    return EmbedStats(embedded=len(pending), total=total, seconds=time.perf_counter() - started)


# --- topic_clusters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterStats:
    k: int
    rows: int
    n_components: int
    explained_variance: float
    warm_started: bool
    refitted: bool               # False: rows were placed at their nearest centroid, no refit
    placed: int                  # rows placed at their nearest centroid by this run
    dropped: int                 # rows this run removed from their cluster without a refit
    sizes: dict[str, int]
    added: list[str]
    removed: list[str]
    changed: list[str]  # live clusters whose membership differs from the previous clustering
    unchanged: list[str]

    @property
    def method(self) -> str:
        if self.refitted:
            return f"re-clustered {self.rows} rows (KMeans {'warm-started' if self.warm_started else 'from scratch'})"
        return f"assigned {self.placed} new rows to existing clusters, removed {self.dropped} (no refit)"


def cluster_topics(
    db_path: str | Path,
    *,
    seed: int = clustering.DEFAULT_SEED,
    embedding_backend: str = embed.DEFAULT_BACKEND,
    progress: ProgressReporter = NO_PROGRESS,
) -> ClusterStats:
    """Place new rows at their nearest centroid while the change since the last full fit is small
    (:func:`mergeit_core.cluster.update_without_refit`), else fit afresh with stable keys."""
    model = embed.model_id(embedding_backend)
    with connect(db_path) as conn:
        current = fetch_table(conn, "pipeline/current_embeddings.sql", {"model": model})
        [(missing,)] = run_sql(conn, "checks/rows_without_embedding.sql", {"model": model}).fetchall()
        previous = fetch_table(conn, "pipeline/previous_clusters.sql")
        fit_rows = run_sql(conn, "pipeline/last_full_fit.sql").fetchall()
        placed_before = {s for (s,) in run_sql(conn, "pipeline/placed_since_fit.sql").fetchall()}
    if missing:
        raise RuntimeError(f"{missing} source rows have no embedding yet: materialize instruction_embeddings first")
    source_ids: list[str] = current.column("source_id").to_pylist()
    tracker = progress.stage("cluster", total=len(source_ids), unit="rows")
    embeddings = _matrix(current)
    previous_keys: list[str] = previous.column("cluster_key").to_pylist()
    previous_members = {
        key: {m for m in members if m is not None}
        for key, members in zip(previous_keys, previous.column("members").to_pylist())
    }
    previous_hashes = {key: clustering.membership_hash(sorted(m)) for key, m in previous_members.items()}
    previous_centroids = _matrix(previous, "centroid")
    last_fit = clustering.FullFit(*fit_rows[0]) if fit_rows else None
    update = clustering.update_without_refit(
        source_ids, embeddings, dict(zip(previous_keys, previous_centroids)), previous_members, last_fit, seed=seed
    )
    if update is None:
        fitted = clustering.fit_clusters(
            embeddings, seed=seed, previous_centroids=previous_centroids if previous_keys else None
        )
        keys_by_label = clustering.assign_stable_keys(source_ids, fitted.labels, previous_members)
        row_keys = [keys_by_label[int(label)] for label in fitted.labels]
        centroids = {keys_by_label[label]: fitted.centroids[label] for label in keys_by_label}
        fit = clustering.FullFit(len(source_ids), 0, seed, fitted.n_components, fitted.explained_variance)
        warm_started = fitted.warm_started
        placed: set[str] = set()
    else:
        row_keys, centroids = update.row_keys, update.centroids
        assert last_fit is not None  # update_without_refit returns None without one
        fit = replace(last_fit, rows_changed_since=last_fit.rows_changed_since + len(update.added) + len(update.removed))
        warm_started = False
        placed = placed_before | set(update.added)
    members: dict[str, list[str]] = {key: [] for key in centroids}
    for source_id, key in zip(source_ids, row_keys):
        members[key].append(source_id)
    hashes = {key: clustering.membership_hash(ids) for key, ids in members.items()}
    removed = sorted(set(previous_keys) - set(members))
    ordered_keys = sorted(members)
    now = now_utc()
    with connect(db_path) as conn, transaction(conn):
        run_sql(conn, "pipeline/clear_clusters.sql")
        insert_columns(conn, "topic_clusters", {
            "source_id": source_ids,
            "cluster_key": row_keys,
            "placed_since_fit": pa.array([source_id in placed for source_id in source_ids], pa.bool_()),
        })
        insert_columns(conn, "clusters", {
            "cluster_key": ordered_keys,
            "size": pa.array([len(members[key]) for key in ordered_keys], pa.int32()),
            "membership_hash": [hashes[key] for key in ordered_keys],
            "centroid": embedding_array(np.stack([centroids[key] for key in ordered_keys])),
            "updated_at": pa.array([now] * len(ordered_keys), pa.timestamp("us")),
        })
        if removed:
            run_sql(conn, "pipeline/delete_partition_rows.sql", {"tables": list(PER_CLUSTER_ASSETS), "cluster_keys": removed})
            run_sql(conn, "pipeline/forget_partition_inputs.sql", {"cluster_keys": removed})
        run_sql(conn, "pipeline/invalidate_moved_rows.sql")
        if update is None:
            run_sql(conn, "pipeline/record_full_fit.sql", {
                "rows": fit.rows, "rows_changed_since": fit.rows_changed_since, "seed": fit.seed,
                "n_components": fit.n_components, "explained_variance": fit.explained_variance, "fitted_at": now,
            })
        else:
            run_sql(conn, "pipeline/record_rows_changed_since_fit.sql", {"rows_changed_since": fit.rows_changed_since})
    changed = sorted(key for key in members if previous_hashes.get(key) != hashes[key])
    tracker.finish(
        clusters=len(members), pca_components=fit.n_components, changed=len(changed),
        rows_placed_without_refit=0 if update is None else len(update.added),
    )
    return ClusterStats(
        k=len(members),
        rows=len(source_ids),
        n_components=fit.n_components,
        explained_variance=fit.explained_variance,
        warm_started=warm_started,
        refitted=update is None,
        placed=0 if update is None else len(update.added),
        dropped=0 if update is None else len(update.removed),
        sizes={key: len(ids) for key, ids in sorted(members.items())},
        added=sorted(set(members) - set(previous_keys)),
        removed=removed,
        changed=changed,
        unchanged=sorted(set(members) - set(changed)),
    )


PER_CLUSTER_ASSETS = ("selected_subset", "merge_pairs", "merged_samples")


def stale_partitions(db_path: str | Path) -> list[str]:
    """Live clusters where some per-cluster asset was computed from another membership, or
    never computed (a failed run stays stale until it succeeds)."""
    with connect(db_path) as conn:
        rows = run_sql(conn, "pipeline/stale_partitions.sql", {"assets": list(PER_CLUSTER_ASSETS)}).fetchall()
    return [key for (key,) in rows]


def ingested_source_files(db_path: str | Path, *, timeout_s: float = 120.0) -> dict[str, tuple[int, str]]:
    """path -> (size, sha256) of every file the last ingest read."""
    with connect(db_path, timeout_s=timeout_s) as conn:
        rows = run_sql(conn, "pipeline/ingested_source_files.sql").fetchall()
    return {path: (size, sha256) for path, size, sha256 in rows}


# --- selected_subset -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectStats:
    cluster_key: str
    cluster_size: int
    selected: int
    kept_whole: bool


def _by_cluster(table: pa.Table, cluster_keys: Sequence[str]) -> dict[str, tuple[list[str], np.ndarray]]:
    """Split rows ordered by cluster_key into each cluster's source ids and embedding matrix."""
    keys = table.column("cluster_key").to_pylist()
    source_ids = table.column("source_id").to_pylist()
    matrix = _matrix(table)
    parts: dict[str, tuple[list[str], np.ndarray]] = {
        key: ([], np.zeros((0, embed.EMBEDDING_DIM), dtype=np.float32)) for key in cluster_keys
    }
    start = 0
    for end in range(1, len(keys) + 1):
        if end == len(keys) or keys[end] != keys[start]:
            parts[keys[start]] = (source_ids[start:end], matrix[start:end])
            start = end
    return parts


def replace_partition_rows(
    db_path: str | Path,
    table: str,
    cluster_keys: Sequence[str],
    run_id: str | None,
    settings: Mapping[str, object],
    columns: dict[str, object],
) -> None:
    """Replace the clusters' rows of a per-cluster table and note, in one transaction, which
    membership of each cluster and which settings they were computed from (the dataset card
    reports the settings)."""
    keys = list(cluster_keys)
    with connect(db_path) as conn, transaction(conn):
        run_sql(conn, "pipeline/delete_partition_rows.sql", {"tables": [table], "cluster_keys": keys})
        insert_columns(conn, table, columns)
        run_sql(conn, "pipeline/record_partition_membership.sql", {
            "asset_name": table, "cluster_keys": keys, "run_id": run_id,
            "materialized_at": now_utc(), "settings": settings_json(settings),
        })


def select_clusters(
    db_path: str | Path,
    cluster_keys: Sequence[str],
    *,
    budget: int = select.DEFAULT_BUDGET,
    embedding_backend: str = embed.DEFAULT_BACKEND,
    run_id: str | None = None,
    progress: ProgressReporter = NO_PROGRESS,
) -> list[SelectStats]:
    """Select in each cluster; one read and one write transaction for all of them, since a
    connection costs more than a small cluster's selection. A cluster's selection made with the
    same budget since the last full clustering fit is kept, and the rows placed in the cluster
    since let in by swaps (:func:`mergeit_core.select.select_keeping`)."""
    keys = list(cluster_keys)
    settings = {"budget": budget}
    with connect(db_path) as conn:
        members = fetch_table(
            conn, "pipeline/cluster_members.sql", {"model": embed.model_id(embedding_backend), "cluster_keys": keys}
        )
        existing = {key for (key,) in run_sql(conn, "pipeline/existing_clusters.sql", {"cluster_keys": keys}).fetchall()}
        previous_rows = run_sql(
            conn, "pipeline/previous_selections.sql", {"cluster_keys": keys, "settings": settings_json(settings)}
        ).fetchall()
    missing = [key for key in keys if key not in existing]
    if missing:
        raise KeyError(f"cluster(s) {missing} do not exist: materialize topic_clusters first")
    previous_by_key: dict[str, list[tuple[str, float | None]]] = {}
    for key, source_id, gain in previous_rows:
        previous_by_key.setdefault(key, []).append((source_id, gain))
    placed = {
        source_id
        for source_id, flag in zip(members.column("source_id").to_pylist(), members.column("placed_since_fit").to_pylist())
        if flag
    }
    tracker = progress.stage("select", total=len(keys), unit="clusters")
    selections: dict[str, tuple[list[str], select.Selection]] = {}
    selected = 0
    for key, (source_ids, matrix) in _by_cluster(members, keys).items():
        position = {source_id: i for i, source_id in enumerate(source_ids)}
        # Re-clustering already dropped selected rows that left the cluster: such a selection is
        # short of the budget, and select_keeping makes it afresh.
        kept = previous_by_key.get(key, [])
        previous = (
            select.Selection(tuple(position[s] for s, _ in kept), tuple(gain for _, gain in kept)) if kept else None
        )
        candidates = [i for i, source_id in enumerate(source_ids) if source_id in placed]
        selection = select.select_keeping(matrix, budget, previous, candidates)
        selections[key] = (source_ids, selection)
        selected += len(selection.indices)
        tracker.advance(1, cluster=f"{key} {len(selection.indices)}/{len(source_ids)}", selected=selected)
    rows = [
        (source_ids[index], key, rank, gain)
        for key, (source_ids, selection) in selections.items()
        for rank, (index, gain) in enumerate(zip(selection.indices, selection.gains), start=1)
    ]
    replace_partition_rows(db_path, "selected_subset", keys, run_id, settings, {
        "source_id": [r[0] for r in rows],
        "cluster_key": [r[1] for r in rows],
        "selection_rank": pa.array([r[2] for r in rows], pa.int32()),
        "marginal_gain": pa.array([r[3] for r in rows], pa.float64()),
    })
    tracker.finish()
    return [
        SelectStats(key, len(source_ids), len(selection.indices), selection.gains[:1] == (None,))
        for key, (source_ids, selection) in selections.items()
    ]


# --- merge_pairs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairStats:
    cluster_key: str
    selected: int
    groups: int
    grouped_rows: int
    mean_similarity: float | None


def pair_clusters(
    db_path: str | Path,
    cluster_keys: Sequence[str],
    *,
    threshold: float = 0.55,
    max_group_size: int = 2,
    embedding_backend: str = embed.DEFAULT_BACKEND,
    run_id: str | None = None,
    progress: ProgressReporter = NO_PROGRESS,
) -> list[PairStats]:
    """Merge groups in each cluster's selection; one read and one write transaction for all.
    Groups made with the same settings whose members are all still selected are kept, and only
    the other selected rows are grouped (:func:`mergeit_core.pairing.groups_keeping`): each new
    group is another LLM merge."""
    keys = list(cluster_keys)
    settings = {"threshold": threshold, "max_group_size": max_group_size}
    with connect(db_path) as conn:
        selected = fetch_table(
            conn, "pipeline/selected_members.sql", {"model": embed.model_id(embedding_backend), "cluster_keys": keys}
        )
        previous_rows = run_sql(
            conn, "pipeline/previous_groups.sql", {"cluster_keys": keys, "settings": settings_json(settings)}
        ).fetchall()
    previous_groups: dict[str, list[list[str]]] = {}
    for key, group_members in previous_rows:
        previous_groups.setdefault(key, []).append(group_members)
    tracker = progress.stage("pair", total=len(keys), unit="clusters")
    rows: list[tuple[str, str, str, int, float]] = []
    stats: list[PairStats] = []
    for key, (source_ids, matrix) in _by_cluster(selected, keys).items():
        position = {source_id: i for i, source_id in enumerate(source_ids)}
        kept = [
            [position[s] for s in group_members]
            for group_members in previous_groups.get(key, [])
            if all(s in position for s in group_members)
        ]
        groups = pairing.groups_keeping(pairing.cosine_similarity_matrix(matrix), threshold, max_group_size, kept)
        cluster_rows = [
            (group_id([source_ids[i] for i in group.members]), key, source_ids[member], index, sim)
            for group in groups
            for index, (member, sim) in enumerate(zip(group.members, group.similarities))
        ]
        sims = [r[4] for r in cluster_rows]
        stats.append(PairStats(key, len(source_ids), len(groups), len(cluster_rows), float(np.mean(sims)) if sims else None))
        rows += cluster_rows
        tracker.advance(1, cluster=f"{key} {len(groups)} groups", groups=sum(r.groups for r in stats))
    replace_partition_rows(
        db_path, "merge_pairs", keys, run_id, settings, {
            "group_id": [r[0] for r in rows],
            "cluster_key": [r[1] for r in rows],
            "source_id": [r[2] for r in rows],
            "member_index": pa.array([r[3] for r in rows], pa.int32()),
            "similarity": pa.array([r[4] for r in rows], pa.float64()),
        },
    )
    tracker.finish()
    return stats


# --- merged_dataset ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetStats:
    samples: int
    merged: int
    selected: int
    source_rows: int


def build_merged_dataset(
    db_path: str | Path, *, run_id: str | None = None, progress: ProgressReporter = NO_PROGRESS
) -> DatasetStats:
    tracker = progress.stage("dataset", total=None, unit="samples")
    with connect(db_path) as conn, transaction(conn):
        run_sql(conn, "pipeline/build_merged_dataset.sql", {"run_id": run_id})
        [(merged, selected_rows, source_rows)] = run_sql(conn, "pipeline/final_samples_by_origin.sql").fetchall()
    tracker.update(merged + selected_rows, merged=merged, selected=selected_rows)
    tracker.finish()
    return DatasetStats(merged + selected_rows, merged, selected_rows, source_rows)


def preview(db_path: str | Path, name: str, limit: int = 5) -> str:
    """A markdown table of the first ``limit`` rows of ``sql/previews/<name>.sql``, for asset metadata."""
    with connect(db_path) as conn:
        result = run_sql(conn, f"previews/{name}.sql", {"limit": limit})
        columns = [d[0] for d in result.description]
        rows = result.fetchall()
    return _markdown_table(columns, rows)


def preview_per_cluster(db_path: str | Path, name: str, cluster_keys: Sequence[str], limit: int = 5) -> dict[str, str]:
    """``preview`` for each cluster in one query: ``sql/previews/<name>.sql`` selects ``cluster_key``
    first, of the clusters ``$cluster_keys``, at most ``$limit`` rows each; the tables leave the
    key column out."""
    with connect(db_path) as conn:
        result = run_sql(conn, f"previews/{name}.sql", {"cluster_keys": list(cluster_keys), "limit": limit})
        columns = [d[0] for d in result.description]
        rows = result.fetchall()
    by_key: dict[str, list[tuple]] = {key: [] for key in cluster_keys}
    for row in rows:
        by_key[row[0]].append(row[1:])
    return {key: _markdown_table(columns[1:], mine) for key, mine in by_key.items()}


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 80 else text[:77] + "..."
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
