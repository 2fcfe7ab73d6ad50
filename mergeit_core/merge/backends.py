"""Choosing a backend: the one an LLMConfig describes, with whatever it runs for the block.

- ``llama_cpp``: the bundled SmolLM2 GGUF (or any GGUF) served by an embedded llama-cpp-python
  server on 127.0.0.1, spoken to through the OpenAI client;
- ``openai``: any OpenAI-compatible endpoint (OpenAI, a vLLM server, ...);
- ``vllm``: vLLM's offline engine in this process, fed whole batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mergeit_core.merge.llama_server import LlamaCppServer, llama_model_path
from mergeit_core.merge.llm import ChatBackend, LLMConfig
from mergeit_core.merge.openai_backend import OpenAICompatibleBackend
from mergeit_core.merge.vllm_backend import VLLMOfflineBackend


@contextmanager
def open_backend(config: LLMConfig) -> Iterator[ChatBackend]:
    """The backend ``config`` describes, with whatever it runs (a server, an engine) for the block."""
    form = config.structured_output_form
    if config.backend == "llama_cpp":
        model_path = llama_model_path(config.model)
        with LlamaCppServer(model_path, n_ctx=config.n_ctx) as server:
            yield OpenAICompatibleBackend(
                config,
                base_url=server.base_url,
                model=server.model_alias,
                structured_output=form,
                api_key_env=None,
                backend="llama_cpp",
            )
    elif config.backend == "openai":
        yield OpenAICompatibleBackend(
            config,
            base_url=config.base_url,
            model=config.model,
            structured_output=form,
            api_key_env=config.api_key_env,
        )
    else:
        engine = VLLMOfflineBackend(config)
        try:
            yield engine
        finally:
            engine.shutdown()
