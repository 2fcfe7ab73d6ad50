"""`mergeit run` on a source folder as users keep one: a CSV beside JSONL, notes and drafts that
are not data, then a second file repeating rows of the first. The LLM is the scripted endpoint,
so the run is quick and its merges known."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from llm_support import ScriptedServer, concatenated_merge
from support import bundled_rows, run_mergeit, write_jsonl
from test_cli import SUMMARY

from mergeit_core.store import connect

pytestmark = pytest.mark.slow

FILES_NOT_READ = re.compile(r"skipped files (\d+); ignored files (\d+)")
# Run ids say which run last rebuilt a row; a rerun rebuilds every row, so they are left out.
LINEAGE = "SELECT * EXCLUDE (merge_run_id, dataset_run_id) FROM lineage ORDER BY ALL"


def rows(db: Path, sql: str) -> list[tuple]:
    with connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_run_reads_csv_reports_files_not_read_and_keeps_lineage_owners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "sources"
    data = bundled_rows()[:40]
    write_jsonl(folder / "data.jsonl", data)
    (folder / "extra.csv").write_text(
        "instruction,input,output\r\n"
        '"List three primary colours,\r\none per line.",,"Red\r\nYellow\r\nBlue"\r\n',
        encoding="utf-8-sig",
    )
    (folder / "notes.txt").write_text("data.jsonl: the first 40 rows of the bundled sample\n")
    write_jsonl(folder / ".draft.jsonl", data[:1])
    write_jsonl(folder / "incoming.jsonl.partial", data[:1])
    db, home = tmp_path / "out.duckdb", tmp_path / "home"
    with ScriptedServer(concatenated_merge) as server:  # merges the gate keeps
        # Settings by environment, the way `dagster dev` and the sensors get them too.
        for name, value in {
            "MERGEIT_SOURCES": str(folder),
            "MERGEIT_THRESHOLD": "0.4",  # merge groups in 40 rows
            "MERGEIT_LLM_BACKEND": "openai",
            "MERGEIT_LLM_BASE_URL": server.base_url,
            "MERGEIT_LLM_MODEL": "scripted",
            "MERGEIT_LLM_API_KEY_ENV": "MERGEIT_TEST_KEY",
            "MERGEIT_TEST_KEY": "local",
        }.items():
            monkeypatch.setenv(name, value)

        def run() -> tuple[int, ...]:
            result = run_mergeit("run", "--db", str(db), "--dagster-home", str(home), cwd=tmp_path, timeout=600)
            assert result.returncode == 0, result.stderr[-4000:]
            summary, not_read = SUMMARY.search(result.stdout), FILES_NOT_READ.search(result.stdout)
            assert summary and not_read, result.stdout
            return tuple(map(int, summary.groups()[:4] + not_read.groups()))

        assert run() == (41, 41, 0, 0, 1, 2)  # read / accepted / rejected / duplicate; skipped; ignored
        assert rows(db, "SELECT regexp_replace(source_file, '.*/', ''), status FROM skipped_files ORDER BY 1") == [
            (".draft.jsonl", "ignored"), ("incoming.jsonl.partial", "ignored"), ("notes.txt", "skipped"),
        ]
        assert rows(db, "SELECT source_row, instruction, output FROM source_instructions WHERE source_file LIKE '%extra.csv'") == [
            (1, "List three primary colours,\none per line.", "Red\nYellow\nBlue"),
        ]
        lineage_before = rows(db, LINEAGE)
        assert rows(db, "SELECT count(*) FROM lineage WHERE origin = 'merged'") != [(0,)]

        # A file sorting before data.jsonl repeats five of its rows.
        repeated = [data[i] for i in (3, 10, 17, 25, 33)]
        write_jsonl(folder / "a_new.jsonl", repeated)
        assert run() == (46, 41, 0, 5, 1, 2)

    assert rows(db, LINEAGE) == lineage_before
    occurrences = rows(
        db,
        "SELECT regexp_replace(source_file, '.*/', ''), is_duplicate, count(*) FROM source_occurrences "
        "WHERE source_id IN (SELECT source_id FROM duplicate_rows) GROUP BY ALL ORDER BY ALL",
    )
    assert occurrences == [("a_new.jsonl", True, 5), ("data.jsonl", False, 5)]


def test_run_names_the_first_rejected_records_on_the_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "sources"
    write_jsonl(folder / "data.jsonl", bundled_rows()[:20])
    bad = folder / "bad.jsonl"
    bad.write_text("\n".join([
        '{"instruction": "Name a prime number.", "input": "", "output": "7"}',
        *['{"instruction": "", "input": "", "output": "nothing asked"}'] * 5,
        '{"instruction": "cut off',
    ]) + "\n", encoding="utf-8")
    (folder / "broken.csv").write_text("question,answer\nWhy?,Because.\n", encoding="utf-8")
    db = tmp_path / "out.duckdb"
    with ScriptedServer(concatenated_merge) as server:
        for name, value in {
            "MERGEIT_LLM_BACKEND": "openai", "MERGEIT_LLM_BASE_URL": server.base_url, "MERGEIT_LLM_MODEL": "scripted",
        }.items():
            monkeypatch.setenv(name, value)
        result = run_mergeit("run", str(folder), "--db", str(db), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = SUMMARY.search(result.stdout)
    assert summary and tuple(map(int, summary.groups()[:3])) == (28, 21, 7), result.stdout  # an unreadable file counts once
    # The first five by file, row and field on stderr, and where all of them are kept.
    listed = [line for line in result.stderr.splitlines() if line.startswith("  ")]
    assert "rejected sources: 7, kept in table rejected_rows of the database; the first 5:" in result.stderr
    assert listed == [
        *(f"  {bad}: row {n}: field 'instruction' is empty" for n in range(2, 7)),
        "  ... and 2 more: SELECT * FROM rejected_rows ORDER BY source_file, source_row",
    ]
    assert rows(db, "SELECT source_row, field FROM rejected_rows WHERE source_file LIKE '%bad.jsonl' ORDER BY 1")[-1] == (7, None)
    assert rows(db, "SELECT count(*) FROM rejected_rows WHERE source_file LIKE '%broken.csv' AND source_row IS NULL") == [(1,)]
    # The same command again proves nothing changed, and still names them.
    again = run_mergeit("run", str(folder), "--db", str(db), cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and "nothing changed since run" in again.stdout, again.stderr[-4000:]
    assert [line for line in again.stderr.splitlines() if line.startswith("  ")] == listed
