"""Choosing a backend: the one an LLMConfig describes, with whatever it runs for the block.

- ``llama_cpp``: the bundled SmolLM2 GGUF (or any GGUF) served by embedded llama-cpp-python
  servers on 127.0.0.1 (one per core group; see ``server_layout``), spoken to through the
  OpenAI-compatible client, requests spread over the servers;
- ``openai``: any OpenAI-compatible endpoint (OpenAI, a vLLM server, ...), or several
  (comma-separated ``base_url``) with requests spread by load and failing ones set aside;
- ``vllm``: vLLM's offline engine in this process, fed whole batches.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace

from mergeit_core.merge.endpoint_pool import EndpointPool
from mergeit_core.merge.llama_server import llama_cpp_servers, llama_model_path
from mergeit_core.merge.llm import ChatBackend, ChatResponse, JsonSchema, LLMConfig, Message, model_identity
from mergeit_core.merge.openai_backend import OpenAICompatibleBackend
from mergeit_core.merge.vllm_backend import VLLMOfflineBackend


def _over_endpoints(
    config: LLMConfig,
    base_urls: list[str | None],
    *,
    model: str,
    api_key_env: str | None,
    backend: str,
    max_in_flight_each: int | None = None,
) -> ChatBackend:
    """One endpoint as is; several as a pool, whose members do not retry on their own: the pool
    moves a failed request to another endpoint instead of waiting on the one that failed."""
    member_config = config if len(base_urls) == 1 else replace(config, max_retries=0)
    members = [
        OpenAICompatibleBackend(
            member_config,
            base_url=url,
            model=model,
            structured_output=config.structured_output_form,
            api_key_env=api_key_env,
            backend=backend,
            max_in_flight=max_in_flight_each,
        )
        for url in base_urls
    ]
    return members[0] if len(members) == 1 else EndpointPool(members)


@contextmanager
def open_backend(config: LLMConfig) -> Iterator[ChatBackend]:
    """The backend ``config`` describes, with whatever it runs (servers, an engine) for the block."""
    if config.backend == "llama_cpp":
        model_path = llama_model_path(config.model)
        with llama_cpp_servers(model_path, servers=config.servers, n_ctx=config.n_ctx) as servers:
            yield _over_endpoints(
                config,
                [server.base_url for server in servers],
                model=servers[0].model_alias,
                api_key_env=None,
                backend="llama_cpp",
                # llama_cpp.server decodes one request at a time: more in flight would only
                # wait in its queue, where a slow model's request times out.
                max_in_flight_each=1,
            )
    elif config.backend == "openai":
        yield _over_endpoints(
            config, config.base_urls, model=config.model, api_key_env=config.api_key_env, backend="openai"
        )
    else:
        engine = VLLMOfflineBackend(config)
        try:
            yield engine
        finally:
            engine.shutdown()


class DeferredBackend:
    """The backend ``config`` describes, opened at the first request and kept open until
    ``stack`` closes: a run whose every answer is cached starts no server at all.

    Not for ``vllm``: the engine wants to be recognised as a batch backend from the start.
    """

    def __init__(self, config: LLMConfig, stack: ExitStack) -> None:
        if config.backend == "vllm":
            raise ValueError("the vllm engine is opened directly, not deferred")
        self.backend = config.backend
        self.model = model_identity(config)
        self.sampling_params = config.sampling_params()
        self._config = config
        self._stack = stack
        self._opened: ChatBackend | None = None
        self._opening = threading.Lock()

    @property
    def opened(self) -> bool:
        return self._opened is not None

    def _open(self) -> ChatBackend:
        with self._opening:
            if self._opened is None:
                opened = self._stack.enter_context(open_backend(self._config))
                if opened.model != self.model:
                    raise RuntimeError(f"backend reports model {opened.model!r}, expected {self.model!r}")
                self._opened = opened
            return self._opened

    async def chat(self, messages: Sequence[Message], schema: JsonSchema) -> ChatResponse:
        # Starting servers blocks for seconds: off the event loop, once, whoever asks first.
        opened = self._opened or await asyncio.to_thread(self._open)
        return await opened.chat(messages, schema)

    async def aclose(self) -> None:
        if self._opened is not None:
            await self._opened.aclose()
