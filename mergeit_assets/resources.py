"""Resources: the DuckDB file, pipeline settings and the LLM, each defaulting from environment
variables so the CLI, the UI's run config and the sensors agree."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field, field_validator, model_validator

from mergeit_core import embed, settings
from mergeit_core.merge.gate import GateThresholds
from mergeit_core.merge.llm import LLMConfig
from mergeit_core.store import connect

_variable = settings.SETTING_VARIABLES


class MergeitDuckDB(DuckDBResource):
    """DuckDBResource whose connections bootstrap the schema, retry a busy file with jittered
    backoff and always close, even when the body raises: other processes wait on that lock."""

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with connect(self.database) as conn:
            yield conn


class PipelineSettings(dg.ConfigurableResource):
    sources: list[str] = Field(description="Source files or folders (Alpaca JSON, JSONL, Parquet, CSV, TSV, ShareGPT).")
    selection_budget: int = Field(default=75, description="Facility-location budget per cluster.")
    similarity_threshold: float = Field(default=0.55, description="Cosine similarity a merge group must exceed.")
    max_group_size: int = Field(default=2, description="Largest merge group.")
    kmeans_seed: int = Field(default=42)
    embed_batch_size: int | None = Field(
        default=None, description="Texts per encode batch; empty: the backend's own (onnx 1, torch 64)."
    )
    embedding_backend: str = Field(
        default=embed.DEFAULT_BACKEND,
        description="onnx (ONNX Runtime on the CPU, no torch at run time) or torch (sentence-transformers); the same vectors.",
    )

    # The same rules hold however the value arrives: CLI flag, environment or launchpad run config.
    @field_validator("selection_budget")
    @classmethod
    def _budget(cls, value: int) -> int:
        settings.check_budget(value)
        return value

    @field_validator("similarity_threshold")
    @classmethod
    def _threshold(cls, value: float) -> float:
        settings.check_threshold(value)
        return value

    @field_validator("embed_batch_size")
    @classmethod
    def _embed_batch_size(cls, value: int | None) -> int | None:
        settings.check_embed_batch_size(value)
        return value

    @field_validator("embedding_backend")
    @classmethod
    def _embedding_backend(cls, value: str) -> str:
        settings.check_embedding_backend(value)
        return value

    @field_validator("max_group_size")
    @classmethod
    def _group_size(cls, value: int) -> int:
        settings.check_max_group_size(value)
        return value

    @classmethod
    def from_env(cls, **overrides: Any) -> PipelineSettings:
        """Environment defaults, then ``overrides`` (None means "not given")."""
        defaults: dict[str, Callable[[], Any]] = {
            "sources": settings.default_sources,
            "selection_budget": lambda: settings.env_int(_variable["selection_budget"], 75),
            "similarity_threshold": lambda: settings.env_float(_variable["similarity_threshold"], 0.55),
            "max_group_size": lambda: settings.env_int(_variable["max_group_size"], 2),
            "embedding_backend": lambda: settings.env_str(_variable["embedding_backend"], embed.DEFAULT_BACKEND),
        }
        return cls(**_resolve(defaults, overrides))


_GATE = GateThresholds()  # the defaults, chosen on bench/merge_eval/


class LLMResource(dg.ConfigurableResource):
    """Which LLM merges the groups. The API key is read from the environment variable named by
    ``api_key_env`` when a request is made: it never appears in config, DuckDB or metadata."""

    backend: str = Field(default="llama_cpp", description="llama_cpp (embedded), openai (any compatible URL) or vllm (offline).")
    model: str = Field(default="", description="Model name; for llama_cpp a GGUF path or smollm2 / qwen2.5-0.5b, empty for the default (qwen2.5-0.5b).")
    base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint for backend=openai; several (comma-separated) spread requests by load.",
    )
    api_key_env: str = Field(default="OPENAI_API_KEY")
    temperature: float = Field(default=0.25)
    max_tokens: int = Field(default=512)
    concurrency: int = Field(default=8, description="Requests in flight.")
    request_timeout_s: float = Field(default=120.0, description="One HTTP request.")
    max_retries: int = Field(default=4, description="Retries of timeouts, 429 (honouring Retry-After) and 5xx.")
    quality_gate: bool = Field(default=False, description="Keep a merge only if an LLM judge scores it above its sources' mean.")
    merge_gate: bool = Field(default=True, description="Keep a merge only if the model-free merge gate finds a real merge.")
    gate_min_instruction_coverage: float = Field(
        default=_GATE.min_instruction_coverage, description="Merge gate: least relative similarity of the instruction to each member's task."
    )
    gate_min_output_coverage: float = Field(
        default=_GATE.min_output_coverage, description="Merge gate: least relative similarity of the output to each member's output."
    )
    gate_min_output_lexical_coverage: float = Field(
        default=_GATE.min_output_lexical_coverage,
        description="Merge gate: share of a member's distinctive answer words that also covers it in the output.",
    )
    gate_min_lexical_coverage: float = Field(
        default=_GATE.min_lexical_coverage, description="Merge gate: share of a member's distinctive words that also covers it."
    )
    gate_max_copy_similarity: float = Field(
        default=_GATE.max_copy_similarity, description="Merge gate: similarity to one source at which a merge is a copy."
    )
    gate_max_output_copy_similarity: float = Field(
        default=_GATE.max_output_copy_similarity,
        description="Merge gate: word overlap of the output with one source's output at which it answers that source only.",
    )
    gate_min_input_coverage: float = Field(
        default=_GATE.min_input_coverage, description="Merge gate: least share of each source input's words the merged task carries."
    )
    gate_max_example_similarity: float = Field(
        default=_GATE.max_example_similarity, description="Merge gate: similarity to a prompt example at which a merge is a copy."
    )
    gate_max_repetition: float = Field(default=_GATE.max_repetition, description="Merge gate: most repeated 4-grams in a field.")
    gate_max_answer_margin: float = Field(
        default=_GATE.max_answer_margin, description="Merge gate: how much closer to the outputs than to the tasks an instruction may be."
    )
    gate_min_output_ratio: float = Field(
        default=_GATE.min_output_ratio, description="Merge gate: least output length over the longest source output's."
    )
    structured_output: str | None = Field(
        default=None,
        description="json_schema (OpenAI, vLLM) or json_object_schema (llama.cpp servers); empty: the backend's default.",
    )
    servers: int | None = Field(
        default=None, description="llama_cpp: embedded servers sharing the cores; empty: one per core, at most 4."
    )
    # vLLM's offline engine (backend=vllm) only.
    vllm_kv_cache_bytes: int | None = Field(
        default=None, description="vLLM KV-cache bytes; empty: 1 GiB on CPU, vLLM's share of GPU memory on a GPU."
    )
    vllm_structured_output_backend: str = Field(default="xgrammar", description="vLLM grammar engine: xgrammar, guidance, outlines or auto.")
    vllm_disable_any_whitespace: bool = Field(default=True, description="vLLM: no free whitespace in JSON answers.")
    vllm_enforce_eager: bool | None = Field(default=None, description="vLLM eager mode; empty: on CPU only.")
    vllm_dtype: str = Field(default="auto", description="vLLM weight dtype: auto, bfloat16, float16, float32.")
    vllm_max_model_len: int = Field(default=4096, description="vLLM context: prompt + answer tokens.")

    @model_validator(mode="after")
    def _valid_llm_config(self) -> LLMResource:
        self.to_config()  # raises SettingError naming the setting
        return self

    @classmethod
    def from_env(cls, **overrides: Any) -> LLMResource:
        """Environment defaults, then ``overrides`` (None means "not given")."""
        defaults: dict[str, Callable[[], Any]] = {
            "backend": lambda: settings.env_str(_variable["backend"], "llama_cpp"),
            "model": lambda: settings.env_str(_variable["model"], ""),
            "base_url": lambda: settings.env_str(_variable["base_url"], None),
            "api_key_env": lambda: settings.env_str(_variable["api_key_env"], "OPENAI_API_KEY"),
            "concurrency": lambda: settings.env_int(_variable["concurrency"], 8),
            "quality_gate": lambda: settings.env_flag(_variable["quality_gate"]),
            "structured_output": lambda: settings.env_str(_variable["structured_output"], None),
            "servers": lambda: settings.env_optional_int(_variable["servers"]),
            "vllm_kv_cache_bytes": lambda: settings.env_optional_int(_variable["vllm_kv_cache_bytes"]),
            "vllm_structured_output_backend": lambda: settings.env_str(_variable["vllm_structured_output_backend"], "xgrammar"),
            "vllm_disable_any_whitespace": lambda: settings.env_optional_bool(_variable["vllm_disable_any_whitespace"], True),
            "vllm_enforce_eager": lambda: settings.env_optional_bool(_variable["vllm_enforce_eager"]),
            "vllm_dtype": lambda: settings.env_str(_variable["vllm_dtype"], "auto"),
            "vllm_max_model_len": lambda: settings.env_int(_variable["vllm_max_model_len"], 4096),
            "merge_gate": lambda: settings.env_optional_bool(_variable["merge_gate"], True),
            **{
                f"gate_{name}": partial(settings.env_float, settings.setting_variable(f"gate_{name}"), getattr(_GATE, name))
                for name in GateThresholds.__dataclass_fields__
            },
        }
        return cls(**_resolve(defaults, overrides))

    def gate_thresholds(self) -> GateThresholds | None:
        """The merge gate's thresholds, or None when the gate is off."""
        if not self.merge_gate:
            return None
        return GateThresholds(**{name: getattr(self, f"gate_{name}") for name in GateThresholds.__dataclass_fields__})

    def to_config(self) -> LLMConfig:
        return LLMConfig(
            backend=self.backend,
            model=self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            concurrency=self.concurrency,
            request_timeout_s=self.request_timeout_s,
            max_retries=self.max_retries,
            structured_output=self.structured_output or None,
            servers=self.servers,
            vllm_kv_cache_bytes=self.vllm_kv_cache_bytes,
            vllm_structured_output_backend=self.vllm_structured_output_backend,
            vllm_disable_any_whitespace=self.vllm_disable_any_whitespace,
            vllm_enforce_eager=self.vllm_enforce_eager,
            vllm_dtype=self.vllm_dtype,
            vllm_max_model_len=self.vllm_max_model_len,
        )


def _resolve(defaults: Mapping[str, Callable[[], Any]], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Given values win; a default is read (its environment variable parsed) only when needed."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return {key: read() for key, read in defaults.items() if key not in given} | given


def build_resources(
    db_path: str | Path | None = None,
    *,
    pipeline: Mapping[str, Any] | None = None,
    llm: Mapping[str, Any] | None = None,
) -> dict[str, dg.ConfigurableResource]:
    """The resources every entry point uses (Definitions, `mergeit run`, tests): environment
    defaults with the given overrides, as NEW resources. Dagster resolves a resource's config from
    its constructor arguments, so editing a built one (``model_copy``) would not reach the run."""
    return {
        "duckdb": MergeitDuckDB(database=str(Path(db_path or settings.default_db_path()).resolve())),
        "pipeline": PipelineSettings.from_env(**(pipeline or {})),
        "llm": LLMResource.from_env(**(llm or {})),
    }
