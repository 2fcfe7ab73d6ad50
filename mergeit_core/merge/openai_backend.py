"""Chat completions against any OpenAI-compatible endpoint (OpenAI, `vllm serve`, llama.cpp).

Retries on 429/5xx/timeouts are the OpenAI client's own (Retry-After honoured, exponential
backoff with jitter); a request that still fails raises LLMUnavailableError.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import openai

from mergeit_core.merge.llm import (
    JSON_SCHEMA_NAME,
    ChatResponse,
    JsonSchema,
    LLMConfig,
    LLMConfigurationError,
    LLMRequestRejectedError,
    LLMUnavailableError,
    Message,
    StructuredOutputForm,
)

# Statuses the OpenAI client retries itself; still failing afterwards means "try again later".
_TRANSIENT_STATUSES = frozenset({408, 409, 429})
# The server understood the request and refuses this one (e.g. a prompt longer than the context).
_REJECTED_STATUSES = frozenset({400, 413, 422})


def response_format(form: StructuredOutputForm, schema: JsonSchema) -> dict[str, Any]:
    if form == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": JSON_SCHEMA_NAME, "schema": dict(schema), "strict": True},
        }
    return {"type": "json_object", "schema": dict(schema)}


class OpenAICompatibleBackend:
    """Chat completions through ``openai.AsyncOpenAI``.

    The client is built per event loop (its connection pool belongs to the loop that opened it),
    so one backend can serve several ``run_merges`` calls; ``aclose`` closes the current one.
    """

    def __init__(
        self,
        config: LLMConfig,
        *,
        base_url: str | None,
        model: str,
        structured_output: StructuredOutputForm,
        api_key_env: str | None,
        backend: str = "openai",
        max_in_flight: int | None = None,
    ) -> None:
        self.backend = backend
        self.max_in_flight = max_in_flight  # None: as many as the run sends
        self.model = model
        self.sampling_params = config.sampling_params()
        self._config = config
        self.base_url = base_url
        self._structured_output = structured_output
        self._api_key_env = api_key_env
        self._client: openai.AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"OpenAICompatibleBackend(model={self.model!r}, base_url={self.base_url!r})"

    def _api_key(self) -> str:
        key = os.environ.get(self._api_key_env) if self._api_key_env else None
        if key:
            return key
        if self._api_key_env and self.base_url is None:
            raise LLMConfigurationError(f"environment variable {self._api_key_env} (the API key) is not set")
        # A self-hosted server (the embedded llama.cpp, `vllm serve`) usually takes no key; one that
        # wants a key answers 401, which stops the run. The client insists on some value.
        return "no-key"

    def _client_for_running_loop(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = openai.AsyncOpenAI(
                api_key=self._api_key(),
                base_url=self.base_url,
                timeout=self._config.request_timeout_s,
                max_retries=self._config.max_retries,
            )
            self._client_loop = loop
        return self._client

    async def chat(self, messages: Sequence[Message], schema: JsonSchema) -> ChatResponse:
        client = self._client_for_running_loop()
        # The SDK's types know neither plain-dict messages nor llama.cpp's json_object+schema.
        # The schema travels in extra_body, which is sent as given: as a typed parameter the SDK
        # walks it against its TypedDicts on every request (~10 ms of CPU each, what bounded a
        # latency-bound endpoint's merges/s on 2 cores). The request body is the same.
        request = client.chat.completions.create(  # type: ignore[call-overload]
            model=self.model,
            messages=[dict(message) for message in messages],
            temperature=self._config.temperature,
            # max_tokens, not max_completion_tokens: llama-cpp-python ignores the latter.
            max_tokens=self._config.max_tokens,
            extra_body={
                "response_format": response_format(self._structured_output, schema),
                **self._config.backend_sampling_extras(),
            },
        )
        try:
            completion = await asyncio.wait_for(request, timeout=self._config.total_timeout_s)
        except TimeoutError as exc:
            raise LLMUnavailableError(
                f"no answer within {self._config.total_timeout_s}s, retries included"
            ) from exc
        except openai.APIConnectionError as exc:  # includes APITimeoutError
            raise LLMUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        except openai.APIStatusError as exc:
            error = _classify_status_error(exc)
            if exc.status_code in (401, 403) and self._api_key_env:
                error = LLMConfigurationError(f"{error} (the API key is read from ${self._api_key_env})")
            raise error from exc
        choice = completion.choices[0]
        usage = completion.usage
        return ChatResponse(
            content=choice.message.content or "",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=choice.finish_reason,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client = self._client_loop = None


def _classify_status_error(error: openai.APIStatusError) -> Exception:
    status = error.status_code
    message = f"HTTP {status}: {error.message}"
    if status in _TRANSIENT_STATUSES or status >= 500:
        return LLMUnavailableError(message)
    if status in _REJECTED_STATUSES:
        return LLMRequestRejectedError(message)
    return LLMConfigurationError(message)

