"""Configuration defaults, from environment variables, and the rules every setting obeys,
shared by the CLI, Dagster's run config and the sensors."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from mergeit_core import embed

BUNDLED_SAMPLE = Path(__file__).resolve().parent / "sample_data" / "alpaca_sample.jsonl"

DEFAULT_DB = "mergeit.duckdb"

N = TypeVar("N", int, float)


class SettingError(ValueError):
    """A setting has a value the pipeline cannot run with; the message names the setting."""


# Each setting's environment variable, by its resource field name: the one place they are named.
SETTING_VARIABLES: dict[str, str] = {
    "sources": "MERGEIT_SOURCES",
    "selection_budget": "MERGEIT_BUDGET",
    "similarity_threshold": "MERGEIT_THRESHOLD",
    "max_group_size": "MERGEIT_MAX_GROUP_SIZE",
    "embedding_backend": "MERGEIT_EMBEDDING_BACKEND",
    "backend": "MERGEIT_LLM_BACKEND",
    "model": "MERGEIT_LLM_MODEL",
    "base_url": "MERGEIT_LLM_BASE_URL",
    "api_key_env": "MERGEIT_LLM_API_KEY_ENV",
    "concurrency": "MERGEIT_LLM_CONCURRENCY",
    "quality_gate": "MERGEIT_QUALITY_GATE",
    "structured_output": "MERGEIT_LLM_STRUCTURED_OUTPUT",
    "servers": "MERGEIT_LLM_SERVERS",
    "merge_gate": "MERGEIT_MERGE_GATE",
    "vllm_kv_cache_bytes": "MERGEIT_VLLM_KV_CACHE_BYTES",
    "vllm_structured_output_backend": "MERGEIT_VLLM_STRUCTURED_OUTPUT_BACKEND",
    "vllm_disable_any_whitespace": "MERGEIT_VLLM_DISABLE_ANY_WHITESPACE",
    "vllm_enforce_eager": "MERGEIT_VLLM_ENFORCE_EAGER",
    "vllm_dtype": "MERGEIT_VLLM_DTYPE",
    "vllm_max_model_len": "MERGEIT_VLLM_MAX_MODEL_LEN",
}
DB_VARIABLE = "MERGEIT_DB"
# Variables that may hold a secret: never hashed or printed.
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def setting_variable(field_name: str) -> str:
    """The environment variable of a resource field; merge gate thresholds are MERGEIT_GATE_<NAME>."""
    if field_name.startswith("gate_"):
        return f"MERGEIT_GATE_{field_name.removeprefix('gate_').upper()}"
    return SETTING_VARIABLES[field_name]


def as_variable_value(value: object) -> str:
    """A setting's value as its environment variable spells it (paths joined by ``os.pathsep``)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return os.pathsep.join(str(part) for part in value)
    return str(value)


def setting_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """The MERGEIT_* variables of ``environ`` less any that may hold a secret, and less the one
    named by $MERGEIT_LLM_API_KEY_ENV (its value is the key)."""
    key_variable = environ.get(SETTING_VARIABLES["api_key_env"])
    return {
        name: value for name, value in environ.items()
        if name.startswith("MERGEIT_") and name != key_variable
        and (name.endswith("_ENV") or not any(word in name for word in _SECRET_WORDS))
    }


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name, "").strip()
    return [part for part in value.split(os.pathsep) if part] if value else None


def default_sources() -> list[str]:
    """``MERGEIT_SOURCES`` (paths separated by ``os.pathsep``), else the bundled sample."""
    return _env_list(SETTING_VARIABLES["sources"]) or [str(BUNDLED_SAMPLE)]


def cache_folder(name: str, env_variable: str) -> Path:
    """``$env_variable`` if set, else ``mergeit/<name>`` in the user's cache ($XDG_CACHE_HOME or ~/.cache)."""
    if os.environ.get(env_variable):
        return Path(os.environ[env_variable]).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "mergeit" / name


def default_db_path() -> str:
    return os.environ.get(DB_VARIABLE, DEFAULT_DB)


def _env_number(name: str, default: N, parse: Callable[[str], N], kind: str) -> N:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return parse(value)
    except ValueError:
        raise SettingError(f"environment variable {name}={value!r} is not {kind}") from None


def env_int(name: str, default: int) -> int:
    return _env_number(name, default, int, "a whole number")


def env_float(name: str, default: float) -> float:
    return _env_number(name, default, float, "a number")


def env_str(name: str, default: str | None) -> str | None:
    return os.environ.get(name, default)


def env_optional_int(name: str) -> int | None:
    """An integer, or None where the variable is unset or empty."""
    value = os.environ.get(name, "").strip()
    return env_int(name, 0) if value else None


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_optional_bool(name: str, default: bool | None = None) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise SettingError(f"environment variable {name}={value!r} is not one of {', '.join(_TRUE + _FALSE)}")


def env_flag(name: str) -> bool:
    return bool(env_optional_bool(name, False))


# --- the rules ---------------------------------------------------------------------------------


def check_budget(budget: int) -> None:
    if budget < 1:
        raise SettingError(f"budget must be at least 1 row per cluster, got {budget}")


def check_embed_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and batch_size < 1:
        raise SettingError(f"embed batch size must be at least 1 text, got {batch_size}")


def check_threshold(threshold: float) -> None:
    if not 0 < threshold <= 1:
        raise SettingError(f"threshold is a cosine similarity in (0, 1], got {threshold}")


def check_max_group_size(size: int) -> None:
    if size < 2:
        raise SettingError(f"max group size must be at least 2 (a merge needs two samples), got {size}")


def check_embedding_backend(backend: str) -> None:
    if backend not in embed.BACKENDS:
        raise SettingError(f"embedding backend must be one of {', '.join(embed.BACKENDS)}, got {backend!r}")


def check_sources_exist(sources: Sequence[str | Path]) -> None:
    missing = [str(source) for source in sources if not Path(source).exists()]
    if missing:
        raise SettingError(f"source path does not exist: {', '.join(missing)}")
