"""Chat completions against any OpenAI-compatible endpoint (OpenAI, `vllm serve`, llama.cpp).

A lean client over httpx: one POST to ``/chat/completions`` per request, the body and the answer
as plain JSON, no OpenAI SDK (its request transforms and response models took a third more of
the client's CPU per merge in bench/bench_merge.py's latency mode: 27 vs 19 ms at 8 in flight,
13 vs 9 ms at 32). Retries follow the SDK's policy: timeouts, connection errors, 408/409/429 and 5xx are
retried with exponential backoff and jitter, a server's Retry-After honoured; a request that
still fails raises LLMUnavailableError.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

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

OPENAI_BASE_URL = "https://api.openai.com/v1"
# Statuses retried besides 5xx; still failing afterwards means "try again later".
_TRANSIENT_STATUSES = frozenset({408, 409, 429})
# The server understood the request and refuses this one (e.g. a prompt longer than the context).
_REJECTED_STATUSES = frozenset({400, 413, 422})
INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is not waited for: the backoff applies instead


def response_format(form: StructuredOutputForm, schema: JsonSchema) -> dict[str, Any]:
    if form == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": JSON_SCHEMA_NAME, "schema": dict(schema), "strict": True},
        }
    return {"type": "json_object", "schema": dict(schema)}


class _StatusError(Exception):
    def __init__(self, status: int, message: str, retry_after_s: float | None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.retry_after_s = retry_after_s


class OpenAICompatibleBackend:
    """Chat completions over one ``httpx.AsyncClient``.

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
        self._client: httpx.AsyncClient | None = None
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
        # wants a key answers 401, which stops the run.
        return "no-key"

    def _client_for_running_loop(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient(
                base_url=(self.base_url or OPENAI_BASE_URL).rstrip("/") + "/",
                headers={"Authorization": f"Bearer {self._api_key()}"},
                timeout=self._config.request_timeout_s,
                # No cap below the run's own: the engine bounds requests in flight.
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
            )
            self._client_loop = loop
        return self._client

    def _body(self, messages: Sequence[Message], schema: JsonSchema) -> bytes:
        return json.dumps(
            {
                "model": self.model,
                "messages": [dict(message) for message in messages],
                "temperature": self._config.temperature,
                # max_tokens, not max_completion_tokens: llama-cpp-python ignores the latter.
                "max_tokens": self._config.max_tokens,
                "response_format": response_format(self._structured_output, schema),
                **self._config.backend_sampling_extras(),
            }
        ).encode()

    async def chat(self, messages: Sequence[Message], schema: JsonSchema) -> ChatResponse:
        client = self._client_for_running_loop()
        body = self._body(messages, schema)
        try:
            answer = await asyncio.wait_for(self._post_with_retries(client, body), timeout=self._config.total_timeout_s)
        except TimeoutError as exc:
            raise LLMUnavailableError(
                f"no answer within {self._config.total_timeout_s}s, retries included"
            ) from exc
        except _StatusError as exc:
            error = _classify_status_error(exc)
            if exc.status in (401, 403) and self._api_key_env:
                error = LLMConfigurationError(f"{error} (the API key is read from ${self._api_key_env})")
            raise error from exc
        return _chat_response(answer)

    async def _post_with_retries(self, client: httpx.AsyncClient, body: bytes) -> Mapping[str, Any]:
        retries = self._config.max_retries
        attempt = 0
        while True:
            server_wait_s: float | None = None
            try:
                response = await client.post(
                    "chat/completions", content=body, headers={"Content-Type": "application/json"}
                )
            except httpx.TimeoutException as exc:
                failure: Exception = LLMUnavailableError(
                    f"request timed out after {self._config.request_timeout_s}s ({type(exc).__name__})"
                )
            except httpx.TransportError as exc:
                failure = LLMUnavailableError(f"connection error ({type(exc).__name__}: {exc})")
            else:
                if response.is_success:
                    return _json_answer(response)
                failure = _StatusError(response.status_code, _error_message(response), retry_after_s(response.headers))
                if not _retried_status(response):
                    raise failure
                server_wait_s = failure.retry_after_s
            if attempt == retries:
                raise failure
            await asyncio.sleep(server_wait_s if server_wait_s is not None else backoff_s(attempt))
            attempt += 1

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._client = self._client_loop = None


def backoff_s(retry: int) -> float:
    """The wait before retry ``retry + 1``: 0.5 s doubling to at most 8 s, less up to a quarter."""
    return min(INITIAL_RETRY_DELAY_S * 2**retry, MAX_RETRY_DELAY_S) * (1 - 0.25 * random.random())


def _retried_status(response: httpx.Response) -> bool:
    should_retry = response.headers.get("x-should-retry")
    if should_retry in ("true", "false"):
        return should_retry == "true"
    return response.status_code in _TRANSIENT_STATUSES or response.status_code >= 500


def retry_after_s(headers: httpx.Headers) -> float | None:
    """The wait a server asks for (retry-after-ms, Retry-After in seconds or as a date), if sane."""
    wait: float | None = None
    if (millis := headers.get("retry-after-ms")) is not None:
        try:
            wait = float(millis) / 1000
        except ValueError:
            pass
    if wait is None and (value := headers.get("retry-after")) is not None:
        try:
            wait = float(value)
        except ValueError:
            try:
                wait = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                wait = None
    return wait if wait is not None and 0 < wait <= MAX_RETRY_AFTER_S else None


def _error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI's {"error": {"message": ...}}, or the body as text."""
    try:
        payload = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return json.dumps(payload)[:500]


def _json_answer(response: httpx.Response) -> Mapping[str, Any]:
    try:
        payload = response.json()
    except ValueError as exc:
        raise LLMUnavailableError(f"the server answered HTTP {response.status_code} with no JSON body") from exc
    if not isinstance(payload, dict) or not payload.get("choices"):
        raise LLMUnavailableError(f"the server's answer has no choices: {str(payload)[:200]}")
    return payload


def _chat_response(answer: Mapping[str, Any]) -> ChatResponse:
    choice = answer["choices"][0]
    usage = answer.get("usage") or {}
    return ChatResponse(
        content=(choice.get("message") or {}).get("content") or "",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=choice.get("finish_reason"),
    )


def _classify_status_error(error: _StatusError) -> Exception:
    if error.status in _TRANSIENT_STATUSES or error.status >= 500:
        return LLMUnavailableError(str(error))
    if error.status in _REJECTED_STATUSES:
        return LLMRequestRejectedError(str(error))
    return LLMConfigurationError(str(error))
