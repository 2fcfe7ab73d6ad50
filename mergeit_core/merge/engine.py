"""Merge groups of similar samples with an LLM: cached, concurrent, re-asked when invalid, kept
only when the model-free merge gate finds a real merge and, with a scorer, only when the merge
scores above its sources (MergeIT's quality check)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from mergeit_core.merge.asking import CachedAsker, Usage
from mergeit_core.merge.cache import CachedResponse, DuckDBResponseCache, merge_cache_key
from mergeit_core.merge.gate import (
    FIGURES_VERSION,
    Embedder,
    Figures,
    GateThresholds,
    GateVerdict,
    judge_merge,
    measure_merge,
)
from mergeit_core.merge.llm import BatchChatBackend, ChatBackend, LLMConfig, LLMError, Message
from mergeit_core.merge.prompt import (
    MERGED_SAMPLE_SCHEMA,
    PROMPT_VERSION,
    InvalidResponseError,
    build_merge_messages,
    parse_merged_sample,
)
from mergeit_core.merge.quality import Scorer
from mergeit_core.records import Sample

MergeStatus = Literal["merged", "failed", "rejected", "rejected_by_quality"]  # rejected: by the gate


@dataclass(frozen=True)
class MergeGroup:
    group_id: str
    cluster_key: str
    members: tuple[Sample, ...]  # in prompt order: the order is part of the cache key

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise ValueError(f"group {self.group_id} has {len(self.members)} member(s); a merge needs 2+")


@dataclass
class MergeOutcome:
    group_id: str
    cluster_key: str
    status: MergeStatus
    sample: Sample | None  # rejected (by the gate) or rejected_by_quality: the candidate, for inspection
    error: str | None
    cache_key: str  # the merge attempt the outcome rests on
    cache_hit: bool  # no merge request was sent for this group in this run
    requests: int  # merge requests sent, answered or not (scoring requests: scorer.usage)
    prompt_tokens: int
    completion_tokens: int
    quality_score: float | None
    sources_mean_score: float | None
    gate: GateVerdict | None  # None: the gate was off or no answer reached it


@dataclass
class MergeReport:
    outcomes: list[MergeOutcome]  # in the order the groups were given
    requests: int
    cache_hits: int
    prompt_tokens: int
    completion_tokens: int
    wall_s: float
    merged: int
    failed: int
    rejected: int  # by the merge gate
    rejected_by_quality: int
    rejected_by_reason: dict[str, int]  # the gate's reasons

    @classmethod
    def of(cls, outcomes: list[MergeOutcome], wall_s: float) -> MergeReport:
        statuses = Counter(outcome.status for outcome in outcomes)
        return cls(
            outcomes=outcomes,
            requests=sum(outcome.requests for outcome in outcomes),
            cache_hits=sum(outcome.cache_hit for outcome in outcomes),
            prompt_tokens=sum(outcome.prompt_tokens for outcome in outcomes),
            completion_tokens=sum(outcome.completion_tokens for outcome in outcomes),
            wall_s=wall_s,
            merged=statuses["merged"],
            failed=statuses["failed"],
            rejected=statuses["rejected"],
            rejected_by_quality=statuses["rejected_by_quality"],
            rejected_by_reason=dict(
                Counter(o.gate.reason for o in outcomes if o.status == "rejected" and o.gate and o.gate.reason)
            ),
        )


def run_merges(
    groups: Iterable[MergeGroup],
    backend: ChatBackend,
    cache: DuckDBResponseCache,
    config: LLMConfig,
    *,
    scorer: Scorer | None = None,
    gate: GateThresholds | None = GateThresholds(),
    embed: Embedder | None = None,
    invalid_retries: int = 2,
    quality_retries: int = 3,
    on_outcome: Callable[[MergeOutcome], None] | None = None,
) -> MergeReport:
    """Merge every group; blocking (runs its own event loop, so call it outside one).

    Every answer, cached or new, passes the merge gate (``gate=None`` turns it off; ``embed``
    defaults to the packaged MiniLM) before the scorer sees it; an answer the gate rejects is
    final for its group: status ``rejected`` with the gate's reason and figures.

    Answers are cached as they arrive (committed at least every COMMIT_INTERVAL_S, and all when
    the run ends) and ``on_outcome`` sees each group as it finishes, so an interrupted run loses
    only the requests in flight. An exception from ``on_outcome`` or a
    configuration error (LLMConfigurationError) stops the run.
    """
    groups = list(groups)
    duplicates = [group_id for group_id, n in Counter(g.group_id for g in groups).items() if n > 1]
    if duplicates:
        raise ValueError(f"duplicate group ids: {duplicates[:5]}")
    if invalid_retries < 0 or quality_retries < 0:
        raise ValueError("invalid_retries and quality_retries must be >= 0")
    run = _MergeRun(backend, cache, config, scorer, gate, embed, invalid_retries, quality_retries)
    started = time.perf_counter()
    try:
        finished = asyncio.run(run.merge_all(groups, on_outcome))
    finally:
        cache.flush()  # every answer paid for is kept, whether the run finished or not
    by_id = {outcome.group_id: outcome for outcome in finished}
    return MergeReport.of([by_id[group.group_id] for group in groups], time.perf_counter() - started)


class _MergeRun:
    def __init__(
        self,
        backend: ChatBackend,
        cache: DuckDBResponseCache,
        config: LLMConfig,
        scorer: Scorer | None,
        gate: GateThresholds | None,
        embed: Embedder | None,
        invalid_retries: int,
        quality_retries: int,
    ) -> None:
        self.backend = backend
        self.cache = cache
        self.config = config
        self.scorer = scorer
        self.gate = gate
        self.embed = embed
        # One gate check at a time: the embedder is CPU-bound and uses every core already.
        self.gate_lock = asyncio.Lock()
        self.stored_figures: Mapping[str, Figures] = {}
        self.stored_figures_asked: frozenset[str] = frozenset()  # keys the prefetch looked up
        self.attempts = quality_retries + 1 if scorer is not None else 1
        self.asker: CachedAsker[Sample] = CachedAsker(
            backend,
            cache,
            purpose="merge",
            prompt_version=PROMPT_VERSION,
            schema=MERGED_SAMPLE_SCHEMA,
            parse=parse_merged_sample,
            asks=invalid_retries + 1,
        )

    def cache_key(self, group: MergeGroup, attempt: int) -> str:
        return merge_cache_key(
            self.backend.model, PROMPT_VERSION, self.config.sampling_params(), group.members, attempt=attempt
        )

    async def check(
        self, group: MergeGroup, key: str, merged: Sample, finish_reason: str | None, from_cache: bool
    ) -> GateVerdict | None:
        if self.gate is None:
            return None
        figures = await self._figures(group, key, merged, from_cache)
        return judge_merge(group.members, merged, figures, finish_reason=finish_reason, thresholds=self.gate)

    async def _figures(self, group: MergeGroup, key: str, merged: Sample, from_cache: bool) -> Figures:
        # Figures are stored per answer only when measured with the packaged MiniLM: an embedder
        # given by a caller (a test, a bench) is another measure. Only a cached answer can have
        # stored figures (they are written after it); a fresh one, which may replace a refused
        # answer under the same key, is always measured.
        stored = self.embed is None
        if stored and from_cache:
            known = self.stored_figures.get(key)
            if known is None and key not in self.stored_figures_asked:
                known = (await asyncio.to_thread(self.cache.get_gate_figures, [key], FIGURES_VERSION)).get(key)
            if known is not None:
                return known
        async with self.gate_lock:
            figures = await asyncio.to_thread(measure_merge, group.members, merged, embed=self.embed)
        if stored:
            await asyncio.to_thread(self.cache.put_gate_figures, key, FIGURES_VERSION, figures)
        return figures

    async def merge_all(
        self, groups: list[MergeGroup], on_outcome: Callable[[MergeOutcome], None] | None
    ) -> list[MergeOutcome]:
        # Every first-attempt answer is looked up at once: cached groups then send nothing.
        prefetched = await self.asker.lookup(self.cache_key(group, 0) for group in groups)
        # ... and their gate figures: a cached answer is judged again without the embedder.
        if self.gate is not None and self.embed is None:
            self.stored_figures_asked = frozenset(prefetched)
            self.stored_figures = await asyncio.to_thread(self.cache.get_gate_figures, prefetched, FIGURES_VERSION)
        # An offline batch engine gets every pending group in one batch; a server gets at most
        # `concurrency` groups in flight, and a group asks one question at a time, so requests
        # in flight never exceed it either (scoring included).
        batched = isinstance(self.backend, BatchChatBackend)
        # A backend may serve fewer at once (``max_in_flight``: an embedded llama.cpp server
        # decodes one request at a time).
        served = getattr(self.backend, "max_in_flight", None) or self.config.concurrency
        slots = asyncio.Semaphore(max(len(groups), 1) if batched else min(self.config.concurrency, served))
        tasks = [asyncio.create_task(self._merge_group(group, prefetched, slots)) for group in groups]
        outcomes: list[MergeOutcome] = []
        try:
            for next_finished in asyncio.as_completed(tasks):
                outcome = await next_finished
                outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.backend.aclose()
        return outcomes

    async def _merge_group(
        self, group: MergeGroup, prefetched: Mapping[str, CachedResponse], slots: asyncio.Semaphore
    ) -> MergeOutcome:
        async with slots:
            return await _GroupMerge(self, group, prefetched).run()


class _GroupMerge:
    """One group's way through merge attempts and quality checks, with its usage tally."""

    def __init__(self, run: _MergeRun, group: MergeGroup, prefetched: Mapping[str, CachedResponse]) -> None:
        self._run = run
        self._group = group
        self._prefetched = prefetched
        self._messages: Sequence[Message] = build_merge_messages(group.members)
        self._usage = Usage()

    async def run(self) -> MergeOutcome:
        best: tuple[float, Sample, str, GateVerdict | None] | None = None
        sources_mean: float | None = None
        for attempt in range(self._run.attempts):
            key = self._run.cache_key(self._group, attempt)
            try:
                answer = await self._run.asker.answer(
                    key, self._messages, await self._cached(key, attempt), self._usage
                )
            except LLMError as error:
                return self._outcome("failed", key, error=f"{type(error).__name__}: {error}")
            if answer.value is None:
                return self._outcome("failed", key, error=answer.error)
            verdict = await self._run.check(self._group, key, answer.value, answer.finish_reason, answer.from_cache)
            if verdict is not None and not verdict.kept:
                return self._outcome(
                    "rejected", key, sample=answer.value, gate=verdict, error=f"merge gate: {verdict.reason}"
                )
            scorer = self._run.scorer
            if scorer is None:
                return self._outcome("merged", key, sample=answer.value, gate=verdict)
            try:
                score = await scorer.score(answer.value)
                if sources_mean is None:
                    sources_mean = statistics.fmean(
                        [await scorer.score(member) for member in self._group.members]
                    )
            except (LLMError, InvalidResponseError) as error:
                return self._outcome("failed", key, error=f"quality scoring failed: {error}")
            if score > sources_mean:
                return self._outcome(
                    "merged", key, sample=answer.value, score=score, sources_mean=sources_mean, gate=verdict
                )
            if best is None or score > best[0]:
                best = (score, answer.value, key, verdict)
        assert best is not None  # the loop runs at least once and returns unless it sets best
        score, sample, key, verdict = best
        return self._outcome(
            "rejected_by_quality",
            key,
            sample=sample,
            score=score,
            sources_mean=sources_mean,
            gate=verdict,
            error=f"no merge in {self._run.attempts} attempt(s) scored above the sources' mean",
        )

    async def _cached(self, key: str, attempt: int) -> CachedResponse | None:
        if attempt == 0:
            return self._prefetched.get(key)
        return (await self._run.asker.lookup([key])).get(key)

    def _outcome(
        self,
        status: MergeStatus,
        key: str,
        *,
        sample: Sample | None = None,
        error: str | None = None,
        score: float | None = None,
        sources_mean: float | None = None,
        gate: GateVerdict | None = None,
    ) -> MergeOutcome:
        return MergeOutcome(
            group_id=self._group.group_id,
            cluster_key=self._group.cluster_key,
            status=status,
            sample=sample,
            error=error,
            cache_key=key,
            cache_hit=self._usage.requests == 0,
            requests=self._usage.requests,
            prompt_tokens=self._usage.prompt_tokens,
            completion_tokens=self._usage.completion_tokens,
            quality_score=score,
            sources_mean_score=sources_mean,
            gate=gate,
        )
