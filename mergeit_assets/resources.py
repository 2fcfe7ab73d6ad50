"""Resources: the DuckDB file, pipeline settings and the LLM, each defaulting from environment
variables so the CLI, the UI's run config and the sensors agree."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from mergeit_core import settings
from mergeit_core.merge.llm import LLMConfig
from mergeit_core.store import connect


class MergeitDuckDB(DuckDBResource):
    """DuckDBResource whose connections bootstrap the schema, retry a busy file with jittered
    backoff and always close, even when the body raises: other processes wait on that lock."""

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with connect(self.database) as conn:
            yield conn


class PipelineSettings(dg.ConfigurableResource):
    sources: list[str] = Field(description="Source files or folders (Alpaca JSON, JSONL, Parquet, ShareGPT).")
    selection_budget: int = Field(default=75, description="Facility-location budget per cluster.")
    similarity_threshold: float = Field(default=0.55, description="Cosine similarity a merge group must exceed.")
    max_group_size: int = Field(default=2, description="Largest merge group.")
    kmeans_seed: int = Field(default=42)
    embed_batch_size: int = Field(default=64)

    @classmethod
    def from_env(cls) -> PipelineSettings:
        return cls(
            sources=settings.default_sources(),
            selection_budget=settings.env_int("MERGEIT_BUDGET", 75),
            similarity_threshold=settings.env_float("MERGEIT_THRESHOLD", 0.55),
            max_group_size=settings.env_int("MERGEIT_MAX_GROUP_SIZE", 2),
        )


class LLMResource(dg.ConfigurableResource):
    """Which LLM merges the groups. The API key is read from the environment variable named by
    ``api_key_env`` when a request is made: it never appears in config, DuckDB or metadata."""

    backend: str = Field(default="llama_cpp", description="llama_cpp (embedded), openai (any compatible URL) or vllm (offline).")
    model: str = Field(default="", description="Model name; for llama_cpp a GGUF path, empty for the bundled SmolLM2.")
    base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint for backend=openai; several (comma-separated) spread requests by load.",
    )
    api_key_env: str = Field(default="OPENAI_API_KEY")
    temperature: float = Field(default=0.25)
    max_tokens: int = Field(default=768)
    concurrency: int = Field(default=8, description="Requests in flight.")
    request_timeout_s: float = Field(default=120.0, description="One HTTP request.")
    max_retries: int = Field(default=4, description="Retries of timeouts, 429 (honouring Retry-After) and 5xx.")
    quality_gate: bool = Field(default=False, description="Keep a merge only if an LLM judge scores it above its sources' mean.")
    structured_output: str | None = Field(
        default=None,
        description="json_schema (OpenAI, vLLM) or json_object_schema (llama.cpp servers); empty: the backend's default.",
    )
    servers: int | None = Field(
        default=None, description="llama_cpp: embedded servers sharing the cores; empty: one per core, at most 4."
    )

    @classmethod
    def from_env(cls) -> LLMResource:
        return cls(
            backend=settings.env_str("MERGEIT_LLM_BACKEND", "llama_cpp"),
            model=settings.env_str("MERGEIT_LLM_MODEL", ""),
            base_url=settings.env_str("MERGEIT_LLM_BASE_URL", None),
            api_key_env=settings.env_str("MERGEIT_LLM_API_KEY_ENV", "OPENAI_API_KEY"),
            concurrency=settings.env_int("MERGEIT_LLM_CONCURRENCY", 8),
            quality_gate=settings.env_str("MERGEIT_QUALITY_GATE", "0") in ("1", "true", "yes"),
            structured_output=settings.env_str("MERGEIT_LLM_STRUCTURED_OUTPUT", None),
            servers=settings.env_optional_int("MERGEIT_LLM_SERVERS"),
        )

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
        )


def default_resources() -> dict[str, object]:
    return {
        "duckdb": MergeitDuckDB(database=settings.default_db_path()),
        "pipeline": PipelineSettings.from_env(),
        "llm": LLMResource.from_env(),
    }
