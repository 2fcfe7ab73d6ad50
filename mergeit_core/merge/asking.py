"""One question, asked through the cache: reuse the stored answer, else ask until the answer
parses (our re-ask for invalid content; transport retries are the client's), then store it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mergeit_core.merge.cache import CachedResponse, CachePurpose, DuckDBResponseCache
from mergeit_core.merge.llm import ChatBackend, ChatResponse, Message
from mergeit_core.merge.prompt import InvalidResponseError

T = TypeVar("T")


@dataclass
class Usage:
    """Requests sent (answered or not) and the tokens the answers cost."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add_answer(self, response: ChatResponse) -> None:
        self.prompt_tokens += response.prompt_tokens
        self.completion_tokens += response.completion_tokens


@dataclass(frozen=True)
class Answer(Generic[T]):
    value: T | None  # None: no valid answer, see error
    error: str | None
    from_cache: bool
    finish_reason: str | None = None  # the backend's, e.g. "length" when cut at the token cap


class CachedAsker(Generic[T]):
    """Asks one kind of question (purpose, prompt version, schema, parser) through ``backend``."""

    def __init__(
        self,
        backend: ChatBackend,
        cache: DuckDBResponseCache,
        *,
        purpose: CachePurpose,
        prompt_version: str,
        schema: Mapping[str, Any],
        parse: Callable[[str], T],
        asks: int,
    ) -> None:
        if asks < 1:
            raise ValueError(f"asks must be >= 1, got {asks}")
        self._backend = backend
        self._cache = cache
        self._purpose: CachePurpose = purpose
        self._prompt_version = prompt_version
        self._schema = schema
        self._parse = parse
        self._asks = asks

    async def lookup(self, keys: Iterable[str]) -> dict[str, CachedResponse]:
        # DuckDB calls block; a thread keeps the event loop (and the requests in flight) moving.
        return await asyncio.to_thread(self._cache.get_many, list(keys))

    async def answer(
        self, key: str, messages: Sequence[Message], cached: CachedResponse | None, usage: Usage
    ) -> Answer[T]:
        """Raises LLMError when the backend gives no answer at all; nothing is cached then."""
        if cached is not None:
            try:
                return Answer(
                    self._parse(cached.response), None, from_cache=True, finish_reason=cached.finish_reason
                )
            except InvalidResponseError as error:
                return Answer(None, f"cached invalid answer: {error}", from_cache=True)
        for _ in range(self._asks):
            usage.requests += 1
            response = await self._backend.chat(messages, self._schema)
            usage.add_answer(response)
            try:
                value = self._parse(response.content)
            except InvalidResponseError as error:
                last_error = error
                continue
            await self._store(key, response, valid=True)
            return Answer(value, None, from_cache=False, finish_reason=_finish_reason(response))
        # Cache the last invalid answer too, so a rerun does not pay for the same failure again.
        await self._store(key, response, valid=False)
        return Answer(None, f"invalid answer after {self._asks} asks: {last_error}", from_cache=False)

    async def _store(self, key: str, response: ChatResponse, *, valid: bool) -> None:
        await asyncio.to_thread(
            self._cache.put,
            key,
            self._purpose,
            self._backend.model,
            self._prompt_version,
            valid,
            response.content,
            response.prompt_tokens,
            response.completion_tokens,
            _finish_reason(response),
        )


def _finish_reason(response: ChatResponse) -> str | None:
    # Not every backend's ChatResponse carries it yet; None means unknown, never "cut".
    return getattr(response, "finish_reason", None)
