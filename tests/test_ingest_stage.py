"""stages.ingest on a real DuckDB file: files not read are recorded, CSV rows land with their
line breaks, the accounting stays balanced, and reruns keep each sample's owning row."""

from __future__ import annotations

from pathlib import Path

from support import bundled_rows, write_jsonl

from mergeit_core import stages
from mergeit_core.store import connect, run_sql
from mergeit_core.summary import summarize


def rows(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    with connect(db) as conn:
        return conn.execute(sql, params or []).fetchall()


def test_files_not_read_are_recorded_and_shown_in_the_summary(tmp_path: Path, db_path: Path) -> None:
    folder = tmp_path / "sources"
    write_jsonl(folder / "data.jsonl", bundled_rows()[:5])
    (folder / "table.csv").write_text(
        'instruction,input,output\n"Write a haiku\nabout rain",,"Soft rain on the roof,\nthe gutters hum."\n',
        encoding="utf-8",
    )
    (folder / "notes.txt").write_text("where this data came from\n")
    write_jsonl(folder / ".draft.jsonl", bundled_rows()[5:6])
    write_jsonl(folder / "next.jsonl.partial", bundled_rows()[6:7])

    stats, _ = stages.ingest(db_path, [folder])

    assert (stats.files, stats.accepted, stats.skipped_files, stats.ignored_files) == (2, 6, 1, 2)
    assert rows(db_path, "SELECT regexp_replace(source_file, '.*/', ''), status, reason FROM skipped_files ORDER BY 1") == [
        (".draft.jsonl", "ignored", "hidden file"),
        ("next.jsonl.partial", "ignored", "still being written ('.partial') file"),
        ("notes.txt", "skipped", "file type '.txt' is not a source format (.csv, .json, .jsonl, .parquet, .tsv)"),
    ]
    assert rows(db_path, "SELECT source_row, instruction, output FROM source_instructions WHERE source_file LIKE '%table.csv'") == [
        (1, "Write a haiku\nabout rain", "Soft rain on the roof,\nthe gutters hum."),
    ]
    assert rows(db_path, "SELECT file_format, balanced FROM source_accounting ORDER BY 1") == [("csv", True), ("jsonl", True)]
    with connect(db_path) as conn:
        assert run_sql(conn, "checks/unbalanced_files.sql").fetchall() == [(0,)]
    summary = summarize(db_path)
    assert (summary.rows_read, summary.skipped_files, summary.ignored_files) == (6, 1, 2)

    (folder / "notes.txt").unlink()
    stages.ingest(db_path, [folder])
    assert rows(db_path, "SELECT status, count(*) FROM skipped_files GROUP BY 1") == [("ignored", 2)]


def test_a_rerun_keeps_owners_and_occurrences_list_every_file(tmp_path: Path, db_path: Path) -> None:
    folder = tmp_path / "sources"
    data = bundled_rows()[:10]
    write_jsonl(folder / "data.jsonl", data)
    stages.ingest(db_path, [folder])
    owners_before = rows(db_path, "SELECT source_id, source_file, source_row FROM source_instructions ORDER BY 1")
    write_jsonl(folder / "a_new.jsonl", [data[7], bundled_rows()[10], data[2]])

    stats, _ = stages.ingest(db_path, [folder])

    assert (stats.accepted, stats.duplicate) == (11, 2)
    owners_after = rows(db_path, "SELECT source_id, source_file, source_row FROM source_instructions ORDER BY 1")
    assert set(owners_before) <= set(owners_after)
    repeated = rows(
        db_path,
        "SELECT regexp_replace(source_file, '.*/', ''), source_row, is_duplicate FROM source_occurrences "
        "WHERE source_id IN (SELECT source_id FROM duplicate_rows) ORDER BY 1, 2",
    )
    assert repeated == [
        ("a_new.jsonl", 1, True), ("a_new.jsonl", 3, True), ("data.jsonl", 3, False), ("data.jsonl", 8, False),
    ]

    (folder / "data.jsonl").unlink()
    stages.ingest(db_path, [folder])
    assert rows(db_path, "SELECT regexp_replace(source_file, '.*/', ''), source_row FROM source_instructions ORDER BY 2") == [
        ("a_new.jsonl", 1), ("a_new.jsonl", 2), ("a_new.jsonl", 3),
    ]
    assert rows(db_path, "SELECT count(*) FROM duplicate_rows") == [(0,)]
