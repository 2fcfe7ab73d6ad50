"""The LLM answer cache in DuckDB's ``llm_cache`` table.

Every answer is written the moment it arrives, in its own short connection, so a run that dies
midway keeps what it paid for. No connection is ever held while a model is being asked.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from mergeit_core.records import Sample, stable_hash
from mergeit_core.store import connect

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


class DuckDBResponseCache:
    """Thread-safe; each call is one short connection, and ``put`` commits its row, together with
    any that arrived while the previous write was under way."""

    def __init__(self, db_path: str | Path) -> None:
        self.db_path = Path(db_path)
        self._pending: list[list[object]] = []
        self._pending_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DuckDBResponseCache({str(self.db_path)!r})"

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedResponse]:
        rows = self._rows_for_keys(
            "SELECT cache_key, response, valid, prompt_tokens, completion_tokens, finish_reason "
            "FROM llm_cache WHERE cache_key IN (SELECT UNNEST(?::VARCHAR[]))",
            keys,
        )
        return {
            key: CachedResponse(response, valid, prompt, completion, finish_reason)
            for key, response, valid, prompt, completion, finish_reason in rows
        }

    def _rows_for_keys(self, query: str, keys: Iterable[str], *params: object) -> list[tuple]:
        """``query``'s rows, its last parameter bound to the distinct ``keys``."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return []
        with _CONNECTION_LOCK, connect(self.db_path) as conn:
            return conn.execute(query, [*params, wanted]).fetchall()

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
        """Returns once the answer is committed. Answers arriving while another is being written
        are committed together by the next writer (one connection for all), so many requests
        in flight do not queue one connection each."""
        row = [
            key,
            purpose,
            model,
            prompt_version,
            valid,
            response,
            prompt_tokens,
            completion_tokens,
            finish_reason,
            _utc_now(),
        ]
        with self._pending_lock:
            self._pending.append(row)
        with _CONNECTION_LOCK:
            with self._pending_lock:
                batch, self._pending = self._pending, []
            if not batch:
                return  # a writer that held the lock before us committed this row with its own
            try:
                with connect(self.db_path) as conn:
                    conn.executemany(
                        "INSERT OR REPLACE INTO llm_cache (cache_key, purpose, model, prompt_version, valid, "
                        "response, prompt_tokens, completion_tokens, finish_reason, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        batch,
                    )
            except BaseException:
                with self._pending_lock:  # the waiting writers' rows go back for the next one
                    self._pending[:0] = [r for r in batch if r is not row]
                raise

    def get_gate_figures(self, keys: Iterable[str], version: str) -> dict[str, dict]:
        """The merge gate's figures stored for these answers' cache keys under ``version``."""
        rows = self._rows_for_keys(
            "SELECT cache_key, figures FROM gate_figures "
            "WHERE figures_version = ? AND cache_key IN (SELECT UNNEST(?::VARCHAR[]))",
            keys,
            version,
        )
        return {key: json.loads(figures) for key, figures in rows}

    def put_gate_figures(self, key: str, version: str, figures: Mapping[str, object]) -> None:
        with _CONNECTION_LOCK, connect(self.db_path) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO gate_figures (cache_key, figures_version, figures, created_at) "
                "VALUES (?, ?, ?, ?)",
                [key, version, json.dumps(figures), _utc_now()],
            )


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # TIMESTAMP columns hold naive UTC
