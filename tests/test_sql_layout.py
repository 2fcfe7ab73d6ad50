"""The SQL the product runs lives in sql/*.sql, with values bound as $parameters: no statement is
written in Python, and every statement file the code names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mergeit_core.store import sql_dir, sql_statements

ROOT = Path(__file__).resolve().parent.parent
CODE = sorted(path for package in ("mergeit_core", "mergeit_assets") for path in (ROOT / package).rglob("*.py"))
STATEMENT = re.compile(
    r"^\s*(SELECT\s|INSERT (OR \w+ )?INTO|DELETE FROM|UPDATE \w+ SET|WITH \w+ AS|CREATE (OR REPLACE )?(TABLE|VIEW)|ALTER TABLE|DROP )"
)
# The DuckDB helpers themselves: transaction control and the Arrow bulk insert, whose table is one
# of our identifiers and whose values never pass through SQL text.
HELPERS = {ROOT / "mergeit_core" / "store.py"}


def _strings(path: Path) -> list[tuple[int, str]]:
    """Every string literal in ``path``, f-strings by their literal parts."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            found.append((node.lineno, str(node.values[0].value)))
    return found


def test_no_sql_statement_is_written_in_python() -> None:
    inline = [
        f"{path.relative_to(ROOT)}:{line}: {text.strip()[:60]}"
        for path in CODE if path not in HELPERS
        for line, text in _strings(path) if STATEMENT.match(text)
    ]
    assert inline == [], "move these into sql/*.sql and run them with run_sql / fetch_table"


def test_every_sql_file_the_code_names_exists_and_parses_into_statements() -> None:
    named = {
        text for path in CODE for _, text in _strings(path)
        if text.endswith(".sql") and "/" in text and not text.startswith("/")
    }
    assert "summary/run_counts.sql" in named  # the scan sees names as the code passes them
    for name in sorted(named):
        assert (sql_dir() / name).is_file(), name
        assert sql_statements(name), name
