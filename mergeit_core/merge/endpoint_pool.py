"""Several endpoints that serve the same model, used as one backend.

Each request goes to the endpoint with the fewest requests in flight (ties rotate, so a quiet
pool still spreads). An endpoint that fails a request transiently (connection refused, timeout,
429, 5xx) leaves the rotation for a cool-down that doubles while it keeps failing and ends at
its first success; the request moves on to another endpoint. When every endpoint is cooling
down, a request waits for the first to come back, so a fleet that is down as a whole fails
after about as long as one endpoint would.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mergeit_core.merge.llm import ChatBackend, ChatResponse, JsonSchema, LLMUnavailableError, Message

DEFAULT_COOLDOWN_S = 1.0
MAX_COOLDOWN_S = 30.0


@dataclass
class Endpoint:
    backend: ChatBackend
    in_flight: int = 0
    answered: int = 0
    failures: int = 0  # consecutive transient failures
    out_until: float = 0.0  # monotonic time before which no request is sent here

    def available(self, now: float) -> bool:
        return now >= self.out_until


class EndpointPool:
    """A ChatBackend over ``backends``, which must answer for the same model and sampling
    parameters: cache keys and provenance cannot tell which endpoint answered."""

    def __init__(
        self,
        backends: Sequence[ChatBackend],
        *,
        attempts: int | None = None,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        max_cooldown_s: float = MAX_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not backends:
            raise ValueError("an endpoint pool needs at least one endpoint")
        models = {backend.model for backend in backends}
        if len(models) > 1:
            raise ValueError(f"the endpoints of a pool must serve one model, got {sorted(models)}")
        self.endpoints = [Endpoint(backend) for backend in backends]
        self.backend = backends[0].backend
        self.model = backends[0].model
        self.sampling_params = backends[0].sampling_params
        limits = [getattr(backend, "max_in_flight", None) for backend in backends]
        self.max_in_flight = None if None in limits else sum(limits)
        # Each endpoint gets a first try, then as many more as one endpoint would retry alone.
        self.attempts = attempts if attempts is not None else 2 * len(backends) + 2
        self._cooldown_s = cooldown_s
        self._max_cooldown_s = max_cooldown_s
        self._clock = clock
        self._turn = itertools.count()

    def __repr__(self) -> str:
        return f"EndpointPool({[e.backend for e in self.endpoints]!r})"

    def _pick(self) -> Endpoint | None:
        """The available endpoint with the fewest requests in flight, or None if all are out."""
        now = self._clock()
        start = next(self._turn) % len(self.endpoints)
        rotated = self.endpoints[start:] + self.endpoints[:start]
        available = [endpoint for endpoint in rotated if endpoint.available(now)]
        return min(available, key=lambda endpoint: endpoint.in_flight) if available else None

    async def chat(self, messages: Sequence[Message], schema: JsonSchema) -> ChatResponse:
        last_error: LLMUnavailableError | None = None
        for _ in range(self.attempts):
            endpoint = self._pick()
            if endpoint is None:
                await asyncio.sleep(max(min(e.out_until for e in self.endpoints) - self._clock(), 0.0))
                continue
            endpoint.in_flight += 1
            try:
                response = await endpoint.backend.chat(messages, schema)
            except LLMUnavailableError as error:
                last_error = error
                self._taken_out(endpoint)
                continue
            finally:
                endpoint.in_flight -= 1
            endpoint.answered += 1
            endpoint.failures = 0
            endpoint.out_until = 0.0
            return response
        raise LLMUnavailableError(f"no endpoint of {len(self.endpoints)} answered in {self.attempts} attempts: {last_error}")

    def _taken_out(self, endpoint: Endpoint) -> None:
        endpoint.failures += 1
        cooldown = min(self._cooldown_s * 2 ** (endpoint.failures - 1), self._max_cooldown_s)
        endpoint.out_until = self._clock() + cooldown

    async def aclose(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.backend.aclose()
