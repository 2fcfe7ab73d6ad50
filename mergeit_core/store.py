"""DuckDB access: schema bootstrap from sql/, short lock-tolerant connections, partition replace."""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

_PACKAGE_DIR = Path(__file__).resolve().parent


def sql_dir() -> Path:
    """`sql/` beside the package in a checkout; `mergeit_core/sql` in an installed wheel."""
    for candidate in (_PACKAGE_DIR / "sql", _PACKAGE_DIR.parent / "sql"):
        if (candidate / "schema.sql").is_file():
            return candidate
    raise FileNotFoundError("mergeit's sql/ folder (schema.sql) was not found")


@cache
def read_sql(name: str) -> str:
    """The text of ``sql/<name>``; ``name`` may include a subfolder such as ``queries/x.sql``."""
    return (sql_dir() / name).read_text(encoding="utf-8")


_PARAMETER = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def sql_statements(name: str) -> list[str]:
    """The statements of ``sql/<name>``, split on the ``;`` that ends a line."""
    return [stmt.strip() for stmt in re.split(r";\s*\n", read_sql(name)) if _has_code(stmt)]


def _has_code(statement: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in statement.splitlines())


def run_sql(conn: duckdb.DuckDBPyConnection, name: str, params: Mapping[str, object] | None = None):
    """Execute ``sql/<name>`` statement by statement, binding each one's ``$name`` parameters.
    Returns the connection after the last statement, ready for ``fetch*``."""
    params = params or {}
    result = conn
    for statement in sql_statements(name):
        wanted = set(_PARAMETER.findall(statement))
        result = conn.execute(statement, {key: params[key] for key in wanted} if wanted else None)
    return result


def fetch_table(conn: duckdb.DuckDBPyConnection, name: str, params: Mapping[str, object] | None = None) -> pa.Table:
    """The result of the single query in ``sql/<name>`` as an Arrow table."""
    [statement] = sql_statements(name)
    wanted = set(_PARAMETER.findall(statement))
    return conn.sql(statement, params={key: params[key] for key in wanted} if wanted else None).to_arrow_table()


def ensure_schema(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(read_sql("schema.sql"))
    conn.execute(read_sql("views.sql"))


_bootstrapped: set[tuple[str, int]] = set()
_bootstrap_lock = threading.Lock()


def _ensure_schema_once(conn: duckdb.DuckDBPyConnection, path: str | Path) -> None:
    """Bootstrap each file once per process: replacing the views on every connection makes two
    connections opened at the same moment conflict on the catalog. Keyed by inode as well, so a
    file deleted and created anew is bootstrapped again."""
    resolved = Path(path).resolve()
    key = (str(resolved), resolved.stat().st_ino)
    with _bootstrap_lock:
        if key not in _bootstrapped:
            ensure_schema(conn)
            _bootstrapped.add(key)


def _is_lock_error(error: Exception) -> bool:
    return "lock" in str(error).lower()


@contextmanager
def connect(
    path: str | Path, *, read_only: bool = False, timeout_s: float = 120.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection. DuckDB allows one writing process per file, so a busy file is
    retried with jittered backoff until ``timeout_s``; callers keep connections brief."""
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        try:
            conn = duckdb.connect(str(path), read_only=read_only)
            break
        except (duckdb.IOException, duckdb.ConnectionException) as error:
            if not _is_lock_error(error) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)
    try:
        if not read_only:
            _ensure_schema_once(conn, path)
        yield conn
    finally:
        conn.close()


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def insert_columns(
    conn: duckdb.DuckDBPyConnection, table: str, columns: Mapping[str, object], *, or_replace: bool = False
) -> int:
    """Bulk insert columnar data (lists, numpy or arrow arrays) through Arrow, matched by name;
    ``table`` is one of our own identifiers, values never pass through SQL text. ``or_replace``:
    a row replaces the one with its primary key (the rows given must have distinct keys)."""
    staged = pa.table(dict(columns))
    if staged.num_rows == 0:
        return 0
    conn.register("_mergeit_staged", staged)
    # No unregister on failure: it would raise on the aborted transaction and hide the cause;
    # the caller's short-lived connection goes away with it.
    verb = "INSERT OR REPLACE" if or_replace else "INSERT"
    conn.execute(f"{verb} INTO {table} BY NAME SELECT * FROM _mergeit_staged")
    conn.unregister("_mergeit_staged")
    return staged.num_rows


def embedding_array(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """A float32 (n, d) matrix as an Arrow fixed-size list, which DuckDB reads as FLOAT[d]."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
