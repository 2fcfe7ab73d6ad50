"""Configuration defaults, from environment variables, shared by the CLI, Dagster and sensors."""

from __future__ import annotations

import os
from pathlib import Path

BUNDLED_SAMPLE = Path(__file__).resolve().parent / "sample_data" / "alpaca_sample.jsonl"

DEFAULT_DB = "mergeit.duckdb"


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name, "").strip()
    return [part for part in value.split(os.pathsep) if part] if value else None


def default_sources() -> list[str]:
    """``MERGEIT_SOURCES`` (paths separated by ``os.pathsep``), else the bundled sample."""
    return _env_list("MERGEIT_SOURCES") or [str(BUNDLED_SAMPLE)]


def default_db_path() -> str:
    return os.environ.get("MERGEIT_DB", DEFAULT_DB)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_optional_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def env_str(name: str, default: str | None) -> str | None:
    return os.environ.get(name, default)
