"""The LLM answer cache in DuckDB's ``llm_cache`` table.

Answers are committed as they arrive, in short connections, so a run that dies midway keeps
what it paid for; answers from a fast model share a commit (one open, commit and close costs
about 0.1 s, which one connection per answer paid hundreds of times a run). No connection is
ever held while a model is being asked.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from mergeit_core.records import Sample, stable_hash
from mergeit_core.store import connect, insert_columns, run_sql, transaction

CachePurpose = Literal["merge", "score"]


@dataclass(frozen=True)
class CachedResponse:
    response: str
    valid: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None = None  # "length": cut at the token cap; None in rows from before


def merge_cache_key(
    model: str,
    prompt_version: str,
    sampling_params: Mapping[str, object],
    sources: Sequence[Sample],
    *,
    attempt: int = 0,
) -> str:
    """Source order is part of the key because it is part of the prompt. ``attempt`` separates
    the re-merges a quality check asks for."""
    payload = {
        "purpose": "merge",
        "model": model,
        "prompt_version": prompt_version,
        "sampling": dict(sampling_params),
        "sources": [source.as_dict() for source in sources],
        "attempt": attempt,
    }
    return stable_hash(payload, length=64)


def score_cache_key(
    model: str, prompt_version: str, sampling_params: Mapping[str, object], sample: Sample
) -> str:
    payload = {
        "purpose": "score",
        "model": model,
        "prompt_version": prompt_version,
        "sampling": dict(sampling_params),
        "sample": sample.as_dict(),
    }
    return stable_hash(payload, length=64)


# Two connections of one process bootstrapping the schema at once fail with "Catalog write-write
# conflict" (store.connect re-creates the views), so every cache in the process shares one lock;
# across processes store.connect waits for DuckDB's file lock.
_CONNECTION_LOCK = threading.Lock()


# Each table's columns as the cache writes them, its primary key first.
_COLUMNS = {
    "llm_cache": (
        "cache_key", "purpose", "model", "prompt_version", "valid", "response", "prompt_tokens",
        "completion_tokens", "finish_reason", "created_at",
    ),
    "gate_figures": ("cache_key", "figures_version", "figures", "created_at"),
}
_KEY_WIDTH = {"llm_cache": 1, "gate_figures": 2}
# An answer waits at most this long for the next commit, while answers keep arriving.
COMMIT_INTERVAL_S = 0.5


class DuckDBResponseCache:
    """Thread-safe. A write never waits for DuckDB: a timer commits everything pending, at once
    when ``commit_interval_s`` has passed since the last commit, else when it has, so a slow
    model's answers are committed one by one as they come, a fast model's share a connection,
    and none waits longer than the interval. ``flush`` commits at once (the merge engine calls it
    when its run ends, failed or not); reads flush first, so they see every answer given."""

    def __init__(self, db_path: str | Path, *, commit_interval_s: float = COMMIT_INTERVAL_S) -> None:
        self.db_path = Path(db_path)
        self.commit_interval_s = commit_interval_s
        self._pending: dict[str, list[tuple[object, ...]]] = {table: [] for table in _COLUMNS}
        self._pending_lock = threading.Lock()
        self._last_commit = -float("inf")
        self._timer: threading.Timer | None = None

    def __repr__(self) -> str:
        return f"DuckDBResponseCache({str(self.db_path)!r})"

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedResponse]:
        rows = self._rows_for_keys("cache/responses.sql", keys)
        return {
            key: CachedResponse(response, valid, prompt, completion, finish_reason)
            for key, response, valid, prompt, completion, finish_reason in rows
        }

    def _rows_for_keys(self, name: str, keys: Iterable[str], **params: object) -> list[tuple]:
        """The rows of ``sql/<name>``, its ``$cache_keys`` bound to the distinct ``keys``."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return []
        self.flush()
        with _CONNECTION_LOCK, connect(self.db_path) as conn:
            return run_sql(conn, name, {**params, "cache_keys": wanted}).fetchall()

    def put(
        self,
        key: str,
        purpose: CachePurpose,
        model: str,
        prompt_version: str,
        valid: bool,
        response: str,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        finish_reason: str | None = None,
    ) -> None:
        self._write("llm_cache", (
            key, purpose, model, prompt_version, valid, response, prompt_tokens, completion_tokens, finish_reason,
            _utc_now(),
        ))

    def get_gate_figures(self, keys: Iterable[str], version: str) -> dict[str, dict]:
        """The merge gate's figures stored for these answers' cache keys under ``version``."""
        rows = self._rows_for_keys("cache/gate_figures.sql", keys, figures_version=version)
        return {key: json.loads(figures) for key, figures in rows}

    def put_gate_figures(self, key: str, version: str, figures: Mapping[str, object]) -> None:
        self._write("gate_figures", (key, version, json.dumps(figures), _utc_now()))

    def _write(self, table: str, row: tuple[object, ...]) -> None:
        with self._pending_lock:
            self._pending[table].append(row)
            if self._timer is None:
                wait = max(self._last_commit + self.commit_interval_s - time.monotonic(), 0.0)
                self._timer = threading.Timer(wait, self._flush_on_time)
                self._timer.daemon = True
                self._timer.start()

    def _flush_on_time(self) -> None:
        with self._pending_lock:
            self._timer = None
        self.flush()  # on failure the rows stay pending for the next commit, which raises

    def flush(self) -> None:
        """Commit every pending row, in one connection."""
        with _CONNECTION_LOCK:
            with self._pending_lock:
                batch = {table: rows for table, rows in self._pending.items() if rows}
                self._pending = {table: [] for table in _COLUMNS}
            if not batch:
                return
            try:
                with connect(self.db_path) as conn, transaction(conn):
                    for table, rows in batch.items():
                        insert_columns(conn, table, _latest_by_key(table, rows), or_replace=True)
            except BaseException:
                with self._pending_lock:  # kept for the next commit
                    for table, rows in batch.items():
                        self._pending[table][:0] = rows
                raise
            self._last_commit = time.monotonic()


def _latest_by_key(table: str, rows: list[tuple[object, ...]]) -> dict[str, list[object]]:
    """The rows as columns, the last row given for a key replacing earlier ones (one statement
    may not write a key twice)."""
    width = _KEY_WIDTH[table]
    latest = list({row[:width]: row for row in rows}.values())
    return {name: [row[i] for row in latest] for i, name in enumerate(_COLUMNS[table])}


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # TIMESTAMP columns hold naive UTC
