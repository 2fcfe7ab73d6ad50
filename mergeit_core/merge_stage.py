"""The merged_samples stage: every merge group of some clusters through the LLM, then each
cluster's rows replaced in one short transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from mergeit_core.merge.backends import DeferredBackend, open_backend
from mergeit_core.merge.cache import DuckDBResponseCache
from mergeit_core.merge.engine import MergeGroup, MergeReport, run_merges
from mergeit_core.merge.llm import ChatBackend, LLMConfig
from mergeit_core.merge.prompt import PROMPT_VERSION
from mergeit_core.merge.quality import LLMJudgeScorer
from mergeit_core.records import Sample
from mergeit_core.stages import now_utc, record_partition_membership
from mergeit_core.store import connect, insert_columns, run_sql, transaction


@dataclass(frozen=True)
class MergeStats:
    clusters: int
    groups: int
    merged: int
    failed: int
    rejected_by_quality: int
    cache_hits: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float


def load_merge_groups(db_path: str | Path, cluster_keys: Sequence[str]) -> list[MergeGroup]:
    groups: list[MergeGroup] = []
    with connect(db_path) as conn:
        for cluster_key in cluster_keys:
            rows = run_sql(conn, "pipeline/merge_groups.sql", {"cluster_key": cluster_key}).fetchall()
            members: dict[str, list[Sample]] = {}
            for gid, _source_id, instruction, input_, output in rows:
                members.setdefault(gid, []).append(Sample(instruction, input_, output))
            groups += [MergeGroup(gid, cluster_key, tuple(samples)) for gid, samples in members.items()]
    return groups


def merge_clusters(
    db_path: str | Path,
    cluster_keys: Sequence[str],
    config: LLMConfig,
    *,
    quality_gate: bool = False,
    run_id: str | None = None,
) -> MergeStats:
    """Merge every group of the given clusters in one pool of concurrent requests, then replace
    each cluster's merged_samples rows. Answers are cached as they arrive, so a rerun after a
    crash only asks for what is missing. No LLM is started unless some answer is not cached."""
    groups = load_merge_groups(db_path, cluster_keys)
    report = MergeReport.of([], 0.0)
    model = backend_name = ""
    if groups:
        cache = DuckDBResponseCache(db_path)
        with ExitStack() as stack:
            backend: ChatBackend = (
                stack.enter_context(open_backend(config)) if config.backend == "vllm" else DeferredBackend(config, stack)
            )
            scorer = LLMJudgeScorer(backend, cache) if quality_gate else None
            report = run_merges(groups, backend, cache, config, scorer=scorer)
            model, backend_name = backend.model, backend.backend
    outcomes = {outcome.group_id: outcome for outcome in report.outcomes}
    rows = [(group, outcomes[group.group_id]) for group in groups]
    sampling = json.dumps(config.sampling_params(), sort_keys=True)
    now = now_utc()
    with connect(db_path) as conn, transaction(conn):
        for cluster_key in cluster_keys:
            conn.execute("DELETE FROM merged_samples WHERE cluster_key = ?", [cluster_key])
        insert_columns(conn, "merged_samples", {
            "group_id": [g.group_id for g, _ in rows],
            "cluster_key": [g.cluster_key for g, _ in rows],
            "status": [o.status for _, o in rows],
            "instruction": pa.array([o.sample.instruction if o.sample else None for _, o in rows], pa.string()),
            "input": pa.array([o.sample.input if o.sample else None for _, o in rows], pa.string()),
            "output": pa.array([o.sample.output if o.sample else None for _, o in rows], pa.string()),
            "model": [model] * len(rows),
            "backend": [backend_name] * len(rows),
            "prompt_version": [PROMPT_VERSION] * len(rows),
            "sampling_params": [sampling] * len(rows),
            "quality_score": pa.array([o.quality_score for _, o in rows], pa.float64()),
            "sources_mean_score": pa.array([o.sources_mean_score for _, o in rows], pa.float64()),
            "error": pa.array([o.error for _, o in rows], pa.string()),
            "cache_key": [o.cache_key for _, o in rows],
            "run_id": pa.array([run_id] * len(rows), pa.string()),
            "partition_key": [g.cluster_key for g, _ in rows],
            "created_at": pa.array([now] * len(rows), pa.timestamp("us")),
        })
        for cluster_key in cluster_keys:
            record_partition_membership(conn, "merged_samples", cluster_key, run_id)
    by_status = {status: sum(o.status == status for o in report.outcomes) for status in ("merged", "failed", "rejected_by_quality")}
    return MergeStats(
        clusters=len(cluster_keys),
        groups=len(groups),
        merged=by_status["merged"],
        failed=by_status["failed"],
        rejected_by_quality=by_status["rejected_by_quality"],
        cache_hits=report.cache_hits,
        requests=report.requests,
        prompt_tokens=report.prompt_tokens,
        completion_tokens=report.completion_tokens,
        seconds=report.wall_s,
    )
