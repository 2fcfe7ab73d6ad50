"""Quality scoring of samples, used to keep a merge only when it beats its sources."""

from __future__ import annotations

from typing import Protocol

from mergeit_core.merge.asking import CachedAsker, Usage
from mergeit_core.merge.cache import DuckDBResponseCache, score_cache_key
from mergeit_core.merge.llm import ChatBackend
from mergeit_core.merge.prompt import (
    SCORE_PROMPT_VERSION,
    SCORE_SCHEMA,
    InvalidScoreError,
    build_score_messages,
    parse_score,
)
from mergeit_core.records import Sample


class Scorer(Protocol):
    async def score(self, sample: Sample) -> float:
        """Higher is better. Raises LLMError or InvalidResponseError when no score can be had."""
        ...


class LLMJudgeScorer:
    """The merging model itself rates a sample 1-10 under a JSON schema; answers are cached in
    ``llm_cache`` with purpose 'score', so a rerun scores nothing twice."""

    def __init__(self, backend: ChatBackend, cache: DuckDBResponseCache, *, invalid_retries: int = 2) -> None:
        self._backend = backend
        self._asker: CachedAsker[int] = CachedAsker(
            backend,
            cache,
            purpose="score",
            prompt_version=SCORE_PROMPT_VERSION,
            schema=SCORE_SCHEMA,
            parse=parse_score,
            asks=invalid_retries + 1,
        )
        self._known: dict[str, float] = {}  # a source is scored once per re-merge attempt otherwise
        self.usage = Usage()

    async def score(self, sample: Sample) -> float:
        key = score_cache_key(
            self._backend.model, SCORE_PROMPT_VERSION, self._backend.sampling_params, sample
        )
        if key not in self._known:
            cached = (await self._asker.lookup([key])).get(key)
            answer = await self._asker.answer(key, build_score_messages(sample), cached, self.usage)
            if answer.value is None:
                raise InvalidScoreError(answer.error)
            self._known[key] = float(answer.value)
        return self._known[key]
