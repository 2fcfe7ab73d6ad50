"""What every LLM backend shares: the configuration, the errors, the answer and the protocols."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from mergeit_core.merge.llama_server import check_llama_model, llama_model_alias
from mergeit_core.settings import SettingError

BackendName = Literal["llama_cpp", "openai", "vllm"]
# How a server is asked for schema-constrained output. OpenAI and vLLM servers take the standard
# json_schema form; llama-cpp-python's server rejects it (HTTP 500, "Input should be 'text' or
# 'json_object'") but turns {"type": "json_object", "schema": ...} into a grammar.
StructuredOutputForm = Literal["json_schema", "json_object_schema"]
STRUCTURED_OUTPUT_FORMS: tuple[StructuredOutputForm, ...] = ("json_schema", "json_object_schema")
DEFAULT_STRUCTURED_OUTPUT: dict[BackendName, StructuredOutputForm] = {
    "llama_cpp": "json_object_schema",
    "openai": "json_schema",
    "vllm": "json_schema",
}
JSON_SCHEMA_NAME = "response"
Message = Mapping[str, str]
JsonSchema = Mapping[str, Any]


class LLMError(Exception):
    """A request got no usable answer; the group fails and nothing is cached."""


class LLMUnavailableError(LLMError):
    """A transient failure (timeout, connection, 429, 5xx) outlived every retry."""


class LLMRequestRejectedError(LLMError):
    """The server refused this particular request (400/413/422)."""


class LLMConfigurationError(RuntimeError):
    """Wrong key, URL or model: every request would fail alike, so the run stops instead."""


@dataclass(frozen=True)
class LLMConfig:
    backend: BackendName = "llama_cpp"
    # llama_cpp: a .gguf path, or anything else for the bundled SmolLM2; otherwise the model name.
    model: str = ""
    # One endpoint, or several serving the same model separated by commas (requests are spread
    # over them by load; see endpoint_pool).
    base_url: str | None = None
    # The NAME of the variable holding the key; the key is read when a client is built.
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.25
    # bench/bench_prompt.py: the longest merge of the bundled sample's pairs took 293 tokens
    # (Qwen 0.5B); a lower cap stops a repetition loop early.
    max_tokens: int = 512
    # llama.cpp's repetition penalty (1.0: none; None: the server's default). Only the embedded
    # llama.cpp server is sent it, and only its cache keys include it.
    repeat_penalty: float | None = None
    concurrency: int = 8
    request_timeout_s: float = 120.0
    max_retries: int = 4
    total_timeout_s: float = 600.0  # one request, retries and their backoff included
    n_ctx: int = 4096  # llama.cpp context: system prompt + examples + sources + answer
    structured_output: StructuredOutputForm | None = None  # None: the backend's default form
    # vLLM's offline engine (backend "vllm"); None: what suits the platform vLLM runs on.
    # KV-cache bytes; None: 1 GiB on CPU (vLLM would otherwise reserve 92% of NUMA node 0, more
    # than such a node often has free), and on a GPU vLLM's own share of the device memory.
    vllm_kv_cache_bytes: int | None = None
    vllm_structured_output_backend: str = "xgrammar"  # or "guidance", "outlines", "auto"
    # Keeps the grammar from letting a model pad JSON with whitespace up to the token cap; vLLM
    # honours it only as an engine setting, not per request.
    vllm_disable_any_whitespace: bool = True
    vllm_enforce_eager: bool | None = None  # None: eager on CPU, CUDA graphs on a GPU
    vllm_dtype: str = "auto"
    vllm_max_model_len: int = 4096  # prompt + answer; also bounds the KV cache one request needs
    # llama_cpp: how many embedded servers share the cores (None: from the CPU count).
    servers: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in DEFAULT_STRUCTURED_OUTPUT:
            raise SettingError(f"unknown LLM backend {self.backend!r} (one of {', '.join(DEFAULT_STRUCTURED_OUTPUT)})")
        if self.backend != "llama_cpp" and not self.model:
            raise SettingError(f"LLM backend {self.backend!r} needs a model name")
        if self.backend == "llama_cpp":
            check_llama_model(self.model)
        if self.base_url and self.backend != "openai":
            raise SettingError(f"a base URL is for the openai backend (any OpenAI-compatible server), not {self.backend!r}")
        if self.structured_output not in (None, *STRUCTURED_OUTPUT_FORMS):
            raise SettingError(
                f"structured output form {self.structured_output!r} is not one of {', '.join(STRUCTURED_OUTPUT_FORMS)}"
            )
        positive = {
            "max_tokens": self.max_tokens,
            "concurrency": self.concurrency,
            "request_timeout_s": self.request_timeout_s,
            "total_timeout_s": self.total_timeout_s,
            "n_ctx": self.n_ctx,
            "vllm_max_model_len": self.vllm_max_model_len,
        }
        if self.vllm_kv_cache_bytes is not None:
            positive["vllm_kv_cache_bytes"] = self.vllm_kv_cache_bytes
        for name, value in positive.items():
            if value <= 0:
                raise SettingError(f"{name} must be positive, got {value}")
        if self.repeat_penalty is not None and self.repeat_penalty <= 0:
            raise SettingError(f"repeat_penalty must be positive, got {self.repeat_penalty}")
        if self.servers is not None and self.servers < 1:
            raise SettingError(f"servers must be at least 1, got {self.servers}")
        if self.max_retries < 0:
            raise SettingError(f"max_retries must be >= 0, got {self.max_retries}")

    @property
    def base_urls(self) -> list[str | None]:
        """The endpoints ``base_url`` names; [None] (OpenAI's own URL) when it names none."""
        urls = [url.strip() for url in (self.base_url or "").split(",") if url.strip()]
        return urls or [None]

    @property
    def structured_output_form(self) -> StructuredOutputForm:
        return self.structured_output or DEFAULT_STRUCTURED_OUTPUT[self.backend]

    def sampling_params(self) -> dict[str, float | int]:
        """What shapes an answer besides model and prompt: part of cache keys and provenance."""
        params: dict[str, float | int] = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        params.update(self.backend_sampling_extras())
        return params

    def backend_sampling_extras(self) -> dict[str, float]:
        """Sampling fields only this backend understands, sent outside the OpenAI request schema."""
        if self.backend == "llama_cpp" and self.repeat_penalty is not None:
            return {"repeat_penalty": self.repeat_penalty}
        return {}


@dataclass(frozen=True)
class ChatResponse:
    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # "stop", or "length" when the answer hit max_tokens: a grammar does not stop a model at the
    # token cap mid-string, so a cut answer can still parse. None where a backend does not say.
    finish_reason: str | None = None


class ChatBackend(Protocol):
    @property
    def backend(self) -> str: ...

    @property
    def model(self) -> str:
        """The model's identity in cache keys and provenance."""
        ...

    @property
    def sampling_params(self) -> Mapping[str, float | int]: ...

    async def chat(self, messages: Sequence[Message], schema: JsonSchema) -> ChatResponse: ...

    async def aclose(self) -> None:
        """Release what the backend holds for the running event loop."""
        ...


@runtime_checkable
class BatchChatBackend(ChatBackend, Protocol):
    """A backend that is fastest when handed the whole workload at once (an offline engine)."""

    def chat_batch(
        self, conversations: Sequence[Sequence[Message]], schema: JsonSchema
    ) -> list[ChatResponse]: ...


def model_identity(config: LLMConfig) -> str:
    """The ``model`` the backend for ``config`` will report (cache keys and provenance use it),
    known without fetching a model or starting anything."""
    return llama_model_alias(config.model) if config.backend == "llama_cpp" else config.model
