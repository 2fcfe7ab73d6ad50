"""What every LLM backend shares: the configuration, the errors, the answer and the protocols."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

BackendName = Literal["llama_cpp", "openai", "vllm"]
# How a server is asked for schema-constrained output. OpenAI and vLLM servers take the standard
# json_schema form; llama-cpp-python's server rejects it (HTTP 500, "Input should be 'text' or
# 'json_object'") but turns {"type": "json_object", "schema": ...} into a grammar.
StructuredOutputForm = Literal["json_schema", "json_object_schema"]
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
    max_tokens: int = 768
    concurrency: int = 8
    request_timeout_s: float = 120.0
    max_retries: int = 4
    total_timeout_s: float = 600.0  # one request, retries and their backoff included
    n_ctx: int = 4096  # llama.cpp context: system prompt + examples + sources + answer
    structured_output: StructuredOutputForm | None = None  # None: the backend's default form
    # llama_cpp: how many embedded servers share the cores (None: from the CPU count).
    servers: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in DEFAULT_STRUCTURED_OUTPUT:
            raise ValueError(f"unknown backend {self.backend!r}")
        if self.backend != "llama_cpp" and not self.model:
            raise ValueError(f"backend {self.backend!r} needs a model name")
        positive = {
            "max_tokens": self.max_tokens,
            "concurrency": self.concurrency,
            "request_timeout_s": self.request_timeout_s,
            "total_timeout_s": self.total_timeout_s,
            "n_ctx": self.n_ctx,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.servers is not None and self.servers < 1:
            raise ValueError(f"servers must be at least 1, got {self.servers}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    @property
    def base_urls(self) -> list[str | None]:
        """The endpoints ``base_url`` names; [None] (the SDK's default URL) when it names none."""
        urls = [url.strip() for url in (self.base_url or "").split(",") if url.strip()]
        return urls or [None]

    @property
    def structured_output_form(self) -> StructuredOutputForm:
        return self.structured_output or DEFAULT_STRUCTURED_OUTPUT[self.backend]

    def sampling_params(self) -> dict[str, float | int]:
        """What shapes an answer besides model and prompt: part of cache keys and provenance."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}


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

