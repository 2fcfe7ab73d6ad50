"""vLLM's offline engine in this process, fed whole batches of conversations."""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mergeit_core.merge.llm import (
    ChatResponse,
    JsonSchema,
    LLMConfig,
    LLMConfigurationError,
    Message,
)


@dataclass
class _QueuedChat:
    messages: list[dict[str, str]]
    schema: JsonSchema
    future: asyncio.Future[ChatResponse] = field(repr=False)


class MicroBatchingBackend(ABC):
    """Collects the ``chat`` calls made in the same event-loop turn into one ``chat_batch``.

    The engine starts every pending group at once for such a backend, so the first round of a
    partition reaches the engine as one batch, and re-asks arriving together batch again.
    ``chat_batch`` runs on the loop's thread: an offline engine saturates the device by itself.
    """

    backend: str
    model: str
    sampling_params: Mapping[str, float | int]

    def __init__(self) -> None:
        self._queue: list[_QueuedChat] = []
        self._flush_task: asyncio.Task[None] | None = None

    @abstractmethod
    def chat_batch(
        self, conversations: Sequence[Sequence[Message]], schema: JsonSchema
    ) -> list[ChatResponse]: ...

    async def chat(self, messages: Sequence[Message], schema: JsonSchema) -> ChatResponse:
        future: asyncio.Future[ChatResponse] = asyncio.get_running_loop().create_future()
        self._queue.append(_QueuedChat([dict(message) for message in messages], schema, future))
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let every task that is about to ask enqueue first
        queued, self._queue = self._queue, []
        by_schema: dict[str, list[_QueuedChat]] = {}
        for item in queued:
            by_schema.setdefault(json.dumps(item.schema, sort_keys=True), []).append(item)
        for batch in by_schema.values():
            try:
                responses = self.chat_batch([item.messages for item in batch], batch[0].schema)
            except Exception as exc:  # every waiter of this batch gets the failure
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, response in zip(batch, responses, strict=True):
                if not item.future.done():
                    item.future.set_result(response)

    async def aclose(self) -> None:
        self._queue.clear()  # left by an aborted run: their waiters died with its event loop


# vLLM sizes its CPU KV cache from NUMA node 0 (92% of it), which may report far less memory
# than is free (13 of 24 GiB on a 2-core VM): the engine then refuses to start. 1 GiB holds
# tens of thousands of tokens of a small model.
CPU_KV_CACHE_BYTES = 1 << 30


def engine_arguments(config: LLMConfig, *, on_cpu: bool) -> dict[str, Any]:
    """``vllm.LLM``'s keyword arguments for ``config`` on vLLM's CPU build or a GPU build."""
    arguments: dict[str, Any] = {
        "model": config.model,
        "dtype": config.vllm_dtype,
        "max_model_len": config.vllm_max_model_len,
        # CUDA graphs speed a GPU up; on a CPU there are none to capture.
        "enforce_eager": on_cpu if config.vllm_enforce_eager is None else config.vllm_enforce_eager,
        "structured_outputs_config": {
            "backend": config.vllm_structured_output_backend,
            "disable_any_whitespace": config.vllm_disable_any_whitespace,
        },
    }
    kv_cache_bytes = config.vllm_kv_cache_bytes
    if kv_cache_bytes is None and on_cpu:
        kv_cache_bytes = CPU_KV_CACHE_BYTES
    if kv_cache_bytes is not None:  # on a GPU, None leaves vLLM its gpu_memory_utilization share
        arguments["kv_cache_memory_bytes"] = kv_cache_bytes
    return arguments


class VLLMOfflineBackend(MicroBatchingBackend):
    backend = "vllm"

    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        import vllm  # optional dependency: only this backend needs it
        from vllm.platforms import current_platform

        try:
            from vllm.sampling_params import StructuredOutputsParams
        except ImportError as exc:
            # Older releases spell it GuidedDecodingParams/guided_decoding, which newer ones
            # silently ignore: refuse to run unconstrained.
            raise LLMConfigurationError(
                f"vLLM {vllm.__version__} lacks StructuredOutputsParams; vLLM >= 0.12 is required"
            ) from exc
        self.model = config.model
        self.sampling_params = config.sampling_params()
        self._config = config
        self._sampling_params_type = vllm.SamplingParams
        self._structured_outputs_type = StructuredOutputsParams
        self._llm = vllm.LLM(**engine_arguments(config, on_cpu=current_platform.is_cpu()))

    def shutdown(self) -> None:
        """Stop the engine's processes now rather than when this process exits: a long-lived
        process (Dagster's) would otherwise keep the model and its KV cache in memory."""
        engine_core = getattr(getattr(self._llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()

    def chat_batch(
        self, conversations: Sequence[Sequence[Message]], schema: JsonSchema
    ) -> list[ChatResponse]:
        params = self._sampling_params_type(
            temperature=self._config.temperature,
            max_tokens=self._config.max_tokens,
            structured_outputs=self._structured_outputs_type(json=dict(schema)),
        )
        if getattr(params, "structured_outputs", None) is None:
            raise LLMConfigurationError("this vLLM dropped structured_outputs from SamplingParams")
        outputs = self._llm.chat(
            [[dict(m) for m in conversation] for conversation in conversations], params, use_tqdm=False
        )
        return [
            ChatResponse(
                content=output.outputs[0].text,
                prompt_tokens=len(output.prompt_token_ids or ()),
                completion_tokens=len(output.outputs[0].token_ids),
                finish_reason=output.outputs[0].finish_reason,
            )
            for output in outputs
        ]

