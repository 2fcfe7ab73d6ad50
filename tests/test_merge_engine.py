"""The merge engine with in-process fake backends: quality gate, batching, response_cache keys.

The fake answers are placeholders ("Merged attempt 1"), so the merge gate is off here (gate=None);
test_merge_gate.py and test_merge_gate_asset.py test it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from llm_support import merge_json, sample

from mergeit_core.merge.cache import DuckDBResponseCache, merge_cache_key, score_cache_key
from mergeit_core.merge.engine import MergeGroup, run_merges
from mergeit_core.merge.llm import ChatResponse, LLMConfig, Message
from mergeit_core.merge.prompt import MERGED_SAMPLE_SCHEMA, PROMPT_VERSION, SCORE_SCHEMA, parse_merged_sample
from mergeit_core.merge.quality import LLMJudgeScorer
from mergeit_core.merge.vllm_backend import MicroBatchingBackend
from mergeit_core.records import Sample

CONFIG = LLMConfig(backend="openai", model="fake-model", max_tokens=64, concurrency=3)


def groups(count: int) -> list[MergeGroup]:
    return [MergeGroup(f"g{i}", "c", (sample(f"g{i}", 1), sample(f"g{i}", 2))) for i in range(count)]


class FakeBackend:
    """Answers merges with a merged sample naming its call number, and scores through ``rate``."""

    backend = "fake"
    model = "fake-model"
    sampling_params = CONFIG.sampling_params()

    def __init__(self, rate: Callable[[Sample], int]) -> None:
        self.rate = rate
        self.merge_calls = 0
        self.score_calls = 0

    async def chat(self, messages: Sequence[Message], schema: Mapping[str, Any]) -> ChatResponse:
        if schema == SCORE_SCHEMA:
            self.score_calls += 1
            rated = json.loads(messages[-1]["content"].split("\n", 1)[1])
            return ChatResponse(json.dumps({"score": self.rate(Sample(**rated))}), 5, 2)
        assert schema == MERGED_SAMPLE_SCHEMA
        self.merge_calls += 1
        return ChatResponse(merge_json(f"Merged attempt {self.merge_calls}", "", "answer"), 5, 2)

    async def aclose(self) -> None:
        pass


def rate_sources_5(merged_scores: dict[int, int]) -> Callable[[Sample], int]:
    """Sources score 5; the merge from call n scores merged_scores[n] (default 3)."""

    def rate(rated: Sample) -> int:
        if rated.instruction.startswith("Merged attempt "):
            return merged_scores.get(int(rated.instruction.rsplit(" ", 1)[1]), 3)
        return 5

    return rate


@pytest.fixture
def response_cache(tmp_path: Path) -> DuckDBResponseCache:
    return DuckDBResponseCache(tmp_path / "cache.duckdb")


def test_a_merge_that_beats_its_sources_is_kept(response_cache: DuckDBResponseCache) -> None:
    backend = FakeBackend(rate_sources_5({1: 8}))

    report = run_merges(
        groups(1), backend, response_cache, CONFIG, scorer=LLMJudgeScorer(backend, response_cache), gate=None
    )

    outcome = report.outcomes[0]
    assert (outcome.status, outcome.quality_score, outcome.sources_mean_score) == ("merged", 8.0, 5.0)
    assert backend.merge_calls == 1 and backend.score_calls == 3


def test_a_merge_is_retried_until_it_beats_its_sources(response_cache: DuckDBResponseCache) -> None:
    backend = FakeBackend(rate_sources_5({3: 6}))
    batch = groups(1)

    report = run_merges(
        batch,
        backend,
        response_cache,
        CONFIG,
        scorer=LLMJudgeScorer(backend, response_cache),
        quality_retries=3,
        gate=None,
    )

    outcome = report.outcomes[0]
    assert outcome.status == "merged" and outcome.sample is not None
    assert outcome.sample.instruction == "Merged attempt 3"
    assert outcome.requests == 3
    sampling = CONFIG.sampling_params()
    assert outcome.cache_key == merge_cache_key(
        "fake-model", PROMPT_VERSION, sampling, batch[0].members, attempt=2
    )


def test_a_merge_that_never_beats_its_sources_is_rejected_and_the_rerun_is_free(
    response_cache: DuckDBResponseCache,
) -> None:
    backend = FakeBackend(rate_sources_5({2: 4}))
    batch = groups(1)

    report = run_merges(
        batch,
        backend,
        response_cache,
        CONFIG,
        scorer=LLMJudgeScorer(backend, response_cache),
        quality_retries=2,
        gate=None,
    )

    outcome = report.outcomes[0]
    assert outcome.status == "rejected_by_quality" and report.rejected_by_quality == 1
    assert outcome.sample is not None and outcome.sample.instruction == "Merged attempt 2"  # the best one
    assert (outcome.quality_score, outcome.sources_mean_score) == (4.0, 5.0)
    assert backend.merge_calls == 3  # one merge per attempt, each under its own response_cache key
    calls = (backend.merge_calls, backend.score_calls)

    rerun = run_merges(
        batch,
        backend,
        response_cache,
        CONFIG,
        scorer=LLMJudgeScorer(backend, response_cache),
        quality_retries=2,
        gate=None,
    )

    assert (backend.merge_calls, backend.score_calls) == calls
    assert rerun.outcomes[0].status == "rejected_by_quality" and rerun.outcomes[0].cache_hit


class RecordingBatchBackend(MicroBatchingBackend):
    """An offline-engine stand-in: records the size of every batch it is handed."""

    backend = "fake-batch"
    model = "fake-model"
    sampling_params = CONFIG.sampling_params()

    def __init__(self, invalid_first_for: set[str]) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.invalid_first_for = invalid_first_for
        self.seen: set[str] = set()

    def chat_batch(
        self, conversations: Sequence[Sequence[Message]], schema: Mapping[str, Any]
    ) -> list[ChatResponse]:
        self.batches.append(len(conversations))
        return [self._answer(conversation[-1]["content"]) for conversation in conversations]

    def _answer(self, prompt: str) -> ChatResponse:
        first_time = prompt not in self.seen
        self.seen.add(prompt)
        flaky = any(f'group {tag}"' in prompt for tag in self.invalid_first_for)
        return ChatResponse("not json" if flaky and first_time else merge_json())


def test_a_batch_backend_gets_every_pending_group_in_one_batch(response_cache: DuckDBResponseCache) -> None:
    backend = RecordingBatchBackend(invalid_first_for={"g2", "g5"})

    report = run_merges(groups(8), backend, response_cache, CONFIG, gate=None)  # concurrency 3 does not cap a batch

    assert report.merged == 8
    assert backend.batches == [8, 2]  # then the two re-asks, together


def test_outcomes_keep_input_order_and_duplicate_ids_are_refused(response_cache: DuckDBResponseCache) -> None:
    backend = FakeBackend(rate_sources_5({}))
    batch = groups(4)[::-1]

    report = run_merges(batch, backend, response_cache, CONFIG, gate=None)

    assert [outcome.group_id for outcome in report.outcomes] == ["g3", "g2", "g1", "g0"]
    with pytest.raises(ValueError, match="duplicate group ids"):
        run_merges(batch + batch[:1], backend, response_cache, CONFIG, gate=None)


def test_merge_cache_key_changes_with_everything_that_changes_the_answer() -> None:
    members = (sample("a", 1), sample("a", 2))
    sampling = {"temperature": 0.25, "max_tokens": 768}
    key = merge_cache_key("m", "merge-v1", sampling, members)

    assert len(key) == 64 and int(key, 16) >= 0
    assert key == merge_cache_key("m", "merge-v1", dict(sampling), list(members))
    variants = {
        merge_cache_key("other", "merge-v1", sampling, members),
        merge_cache_key("m", "merge-v2", sampling, members),
        merge_cache_key("m", "merge-v1", {**sampling, "temperature": 0.0}, members),
        merge_cache_key("m", "merge-v1", sampling, members[::-1]),
        merge_cache_key("m", "merge-v1", sampling, members, attempt=1),
        score_cache_key("m", "merge-v1", sampling, members[0]),
    }
    assert key not in variants and len(variants) == 6


def test_cache_put_replaces_and_get_many_returns_only_known_keys(response_cache: DuckDBResponseCache) -> None:
    response_cache.put("k1", "merge", "m", "merge-v1", False, "not json", 3, 1)
    response_cache.put("k1", "merge", "m", "merge-v1", True, merge_json(), 4, 2)
    response_cache.put("k2", "score", "m", "score-v1", True, '{"score": 7}', None, None)

    found = response_cache.get_many(["k1", "k2", "missing", "k1"])

    assert set(found) == {"k1", "k2"}
    assert found["k1"].valid and parse_merged_sample(found["k1"].response).output == "Merged answer"
    assert (found["k1"].prompt_tokens, found["k1"].completion_tokens) == (4, 2)
    assert found["k2"].prompt_tokens is None
    assert response_cache.get_many([]) == {}


def test_caches_of_one_file_can_be_used_from_many_threads(tmp_path: Path) -> None:
    # Separate instances, as the engine's and the scorer's are; concurrent schema bootstraps
    # on one file conflict in DuckDB unless the process serialises them.
    caches = [DuckDBResponseCache(tmp_path / "shared.duckdb") for _ in range(2)]

    def put(i: int) -> None:
        caches[i % 2].put(f"k{i}", "merge", "m", "merge-v1", True, merge_json(), 1, 1)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(put, range(40)))

    assert len(caches[0].get_many(f"k{i}" for i in range(40))) == 40


class OneAtATimeBackend(FakeBackend):
    """Serves one request at a time, as an embedded llama.cpp server does; records the most in flight."""

    max_in_flight = 1

    def __init__(self) -> None:
        super().__init__(rate_sources_5({}))
        self.in_flight = 0
        self.most_in_flight = 0

    async def chat(self, messages: Sequence[Message], schema: Mapping[str, Any]) -> ChatResponse:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        try:
            return await super().chat(messages, schema)
        finally:
            self.in_flight -= 1


def test_a_backend_that_serves_one_at_a_time_never_gets_more(response_cache: DuckDBResponseCache) -> None:
    backend = OneAtATimeBackend()
    report = run_merges(groups(6), backend, response_cache, CONFIG, gate=None)  # CONFIG allows 3
    assert report.merged == 6 and backend.most_in_flight == 1
