"""The merged_samples stage: every merge group of some clusters through the LLM, then each
cluster's rows replaced in one short transaction."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

from mergeit_core.merge.backends import DeferredBackend, open_backend
from mergeit_core.merge.cache import DuckDBResponseCache
from mergeit_core.merge.engine import MergeGroup, MergeOutcome, MergeReport, run_merges
from mergeit_core.merge.gate import FIGURES, LIST_FIGURES, GateThresholds
from mergeit_core.merge.llm import ChatBackend, LLMConfig
from mergeit_core.merge.prompt import PROMPT_VERSION
from mergeit_core.merge.quality import LLMJudgeScorer
from mergeit_core.progress import NO_PROGRESS, ProgressReporter, StageProgress
from mergeit_core.records import Sample
from mergeit_core.stages import now_utc, replace_partition_rows
from mergeit_core.store import connect, run_sql


@dataclass(frozen=True)
class MergeStats:
    clusters: int
    groups: int
    merged: int
    failed: int
    rejected: int  # by the merge gate
    rejected_by_quality: int
    rejected_by_reason: dict[str, int]
    cache_hits: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    # Per cluster: LLM requests sent and groups answered from the cache in this run.
    requests_by_cluster: dict[str, int] = field(default_factory=dict)
    cache_hits_by_cluster: dict[str, int] = field(default_factory=dict)


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
    merge_gate: GateThresholds | None = GateThresholds(),
    run_id: str | None = None,
    progress: ProgressReporter = NO_PROGRESS,
) -> MergeStats:
    """Merge every group of the given clusters in one pool of concurrent requests, then replace
    each cluster's merged_samples rows. Answers are cached as they arrive, so a rerun after a
    crash only asks for what is missing, and the merge gate (``merge_gate=None``: off) judges
    cached answers again, so new thresholds cost no request. No LLM is started unless some
    answer is not cached."""
    groups = load_merge_groups(db_path, cluster_keys)
    report = MergeReport.of([], 0.0)
    model = backend_name = ""
    tracker = progress.stage("merge", total=len(groups), unit="groups")
    if groups:
        cache = DuckDBResponseCache(db_path)
        with ExitStack() as stack:
            backend: ChatBackend = (
                stack.enter_context(open_backend(config)) if config.backend == "vllm" else DeferredBackend(config, stack)
            )
            scorer = LLMJudgeScorer(backend, cache) if quality_gate else None
            report = run_merges(
                groups, backend, cache, config, scorer=scorer, gate=merge_gate, on_outcome=_MergeTally(tracker)
            )
            model, backend_name = backend.model, backend.backend
    tracker.finish()
    outcomes = {outcome.group_id: outcome for outcome in report.outcomes}
    rows = [(group, outcomes[group.group_id]) for group in groups]
    sampling = json.dumps(config.sampling_params(), sort_keys=True)
    now = now_utc()
    settings = {"quality_gate": quality_gate, "merge_gate": asdict(merge_gate) if merge_gate else None}
    replace_partition_rows(db_path, "merged_samples", cluster_keys, run_id, settings, {
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
        "gate_reason": pa.array([o.gate.reason if o.gate else None for _, o in rows], pa.string()),
        **_gate_figure_columns([o for _, o in rows]),
        "cache_key": [o.cache_key for _, o in rows],
        "run_id": pa.array([run_id] * len(rows), pa.string()),
        "partition_key": [g.cluster_key for g, _ in rows],
        "created_at": pa.array([now] * len(rows), pa.timestamp("us")),
    })
    return MergeStats(
        clusters=len(cluster_keys),
        groups=len(groups),
        merged=report.merged,
        failed=report.failed,
        rejected=report.rejected,
        rejected_by_quality=report.rejected_by_quality,
        rejected_by_reason=report.rejected_by_reason,
        cache_hits=report.cache_hits,
        requests=report.requests,
        prompt_tokens=report.prompt_tokens,
        completion_tokens=report.completion_tokens,
        seconds=report.wall_s,
        requests_by_cluster=_sum_by_cluster(report.outcomes, lambda o: o.requests),
        cache_hits_by_cluster=_sum_by_cluster(report.outcomes, lambda o: int(o.cache_hit)),
    )


def _sum_by_cluster(outcomes: Sequence[MergeOutcome], value) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for outcome in outcomes:
        totals[outcome.cluster_key] += value(outcome)
    return dict(totals)


class _MergeTally:
    """Reports each finished group: requests/s, cache hits and failures so far."""

    def __init__(self, tracker: StageProgress) -> None:
        self._tracker = tracker
        self._requests = self._cache_hits = 0
        self._statuses: Counter[str] = Counter()

    def __call__(self, outcome: MergeOutcome) -> None:
        self._requests += outcome.requests
        self._cache_hits += outcome.cache_hit
        self._statuses[outcome.status] += 1
        elapsed = self._tracker.elapsed_s
        self._tracker.advance(
            1,
            requests=self._requests,
            requests_per_s=f"{self._requests / elapsed:.2f}" if elapsed > 0 else "0",
            cache_hits=self._cache_hits,
            failed=self._statuses["failed"],
            **{status: n for status, n in self._statuses.items() if status not in ("merged", "failed")},
        )


def _gate_figure_columns(outcomes: Sequence[MergeOutcome]) -> dict[str, pa.Array]:
    """One gate_<figure> column per figure the gate computed; NULL where no answer reached it."""
    return {
        f"gate_{name}": pa.array(
            [o.gate.figures.get(name) if o.gate else None for o in outcomes],
            pa.list_(pa.float64()) if name in LIST_FIGURES else pa.float64(),
        )
        for name in FIGURES
    }
