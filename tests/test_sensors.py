"""The source sensor on a real instance: new, touched, rewritten, half-written and deleted files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from mergeit_assets import sensors
from mergeit_assets.resources import MergeitDuckDB, PipelineSettings
from mergeit_assets.sensors import CHANGED_FILES_TAG, UPSTREAM_SELECTION, source_files_sensor, stale_span
from support import bundled_rows, settled, write_jsonl

from mergeit_core import stages
from mergeit_core.store import connect



def tick(instance: dg.DagsterInstance, folder: Path, cursor: str | None, db: Path | None = None):
    """One evaluation of the source sensor; ``db`` defaults to a database beside the folder."""
    resources = {
        "pipeline": PipelineSettings(sources=[str(folder)]),
        "duckdb": MergeitDuckDB(database=str(db or folder.parent / "mergeit.duckdb")),
    }
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = source_files_sensor(context)
    return result, context.cursor


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def test_new_touched_rewritten_and_deleted_files(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    folder = tmp_path / "watched"
    rows = bundled_rows()
    first = settled(write_jsonl(folder / "a.jsonl", rows[:10]))

    request, cursor = tick(instance, folder, None)
    assert isinstance(request, dg.RunRequest)
    assert request.asset_selection == UPSTREAM_SELECTION
    assert "added a.jsonl" in request.tags[CHANGED_FILES_TAG]

    skip, cursor = tick(instance, folder, cursor)
    assert isinstance(skip, dg.SkipReason)

    # Touched: a new mtime, the same bytes -> nothing to do.
    os.utime(first, (time.time() - 60, time.time() - 60))
    skip, cursor = tick(instance, folder, cursor)
    assert isinstance(skip, dg.SkipReason) and "no new or changed" in skip.skip_message

    # Rewritten with other content -> a run, with a new run key.
    settled(write_jsonl(first, rows[:12]))
    rewritten, cursor = tick(instance, folder, cursor)
    assert isinstance(rewritten, dg.RunRequest)
    assert rewritten.run_key != request.run_key
    assert "modified a.jsonl" in rewritten.tags[CHANGED_FILES_TAG]

    first.unlink()
    deleted, cursor = tick(instance, folder, cursor)
    assert isinstance(deleted, dg.RunRequest) and "deleted a.jsonl" in deleted.tags[CHANGED_FILES_TAG]
    assert json.loads(cursor)["files"] == {}


def test_file_still_being_written_is_not_read_until_it_settles(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    folder = tmp_path / "watched"
    rows = bundled_rows()
    _, cursor = tick(instance, settled(write_jsonl(folder / "old.jsonl", rows[:5])).parent, None)

    growing = folder / "new.jsonl"
    write_jsonl(growing, rows[5:8])  # mtime is now: a writer may still be appending
    waiting, cursor = tick(instance, folder, cursor)
    assert isinstance(waiting, dg.SkipReason) and "settle" in waiting.skip_message

    with growing.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(rows[8]) + "\n")
    still_waiting, cursor = tick(instance, folder, cursor)
    assert isinstance(still_waiting, dg.SkipReason) and "new.jsonl" in still_waiting.skip_message

    # Same size and mtime as the previous tick: the writer is done.
    request, cursor = tick(instance, folder, cursor)
    assert isinstance(request, dg.RunRequest) and "added new.jsonl" in request.tags[CHANGED_FILES_TAG]

    # Files under a temporary name are never read; the rename makes them visible.
    settled(write_jsonl(folder / "next.jsonl.partial", rows[9:12]))
    skip, cursor = tick(instance, folder, cursor)
    assert isinstance(skip, dg.SkipReason)
    (folder / "next.jsonl.partial").rename(folder / "next.jsonl")
    renamed, _ = tick(instance, folder, cursor)
    assert isinstance(renamed, dg.RunRequest) and "added next.jsonl" in renamed.tags[CHANGED_FILES_TAG]


def test_a_new_cursor_starts_from_what_the_database_ingested(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    """A sensor without a cursor (a new instance beside a database `mergeit run` made, or a
    reset sensor) asks for no run for the files already ingested, and sees what differs."""
    folder, db = tmp_path / "watched", tmp_path / "mergeit.duckdb"
    rows = bundled_rows()
    kept = settled(write_jsonl(folder / "kept.jsonl", rows[:6]))
    rewritten = settled(write_jsonl(folder / "rewritten.jsonl", rows[6:9]))
    gone = settled(write_jsonl(folder / "gone.jsonl", rows[9:12]))
    stages.ingest(db, [str(folder)])

    skip, cursor = tick(instance, folder, None, db)
    assert isinstance(skip, dg.SkipReason) and "no new or changed" in skip.skip_message
    assert json.loads(cursor)["files"][str(kept)]["mtime_ns"] == kept.stat().st_mtime_ns  # now known by stat

    # The same bytes under a new mtime are no change; other bytes, a new and a deleted file are.
    os.utime(kept, (time.time() - 30, time.time() - 30))
    settled(write_jsonl(rewritten, rows[6:10]))
    gone.unlink()
    settled(write_jsonl(folder / "new.jsonl", rows[12:14]))
    request, _ = tick(instance, folder, None, db)
    assert isinstance(request, dg.RunRequest)
    assert request.tags[CHANGED_FILES_TAG] == "added new.jsonl, modified rewritten.jsonl, deleted gone.jsonl"


def test_a_new_cursor_waits_while_the_database_is_being_written(
    instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, db = tmp_path / "watched", tmp_path / "mergeit.duckdb"
    settled(write_jsonl(folder / "a.jsonl", bundled_rows()[:3]))
    with connect(db):
        pass  # the schema exists, as after any run
    monkeypatch.setattr(sensors, "DATABASE_WAIT_S", 0.5)
    # Another process holds the file, as a long write does.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(120)", str(db)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        skip, cursor = tick(instance, folder, None, db)
    finally:
        holder.kill()
        holder.wait()
    assert isinstance(skip, dg.SkipReason) and "trying again next tick" in skip.skip_message
    assert cursor is None  # nothing recorded: the next tick starts from the database again
    request, _ = tick(instance, folder, None, db)
    assert isinstance(request, dg.RunRequest) and "added a.jsonl" in request.tags[CHANGED_FILES_TAG]


def test_missing_source_folder_is_a_skip_with_the_reason(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    skip, _ = tick(instance, tmp_path / "nowhere", None)
    assert isinstance(skip, dg.SkipReason) and "nowhere" in skip.skip_message


def test_stale_span_follows_the_instance_partition_order() -> None:
    # Keys are added as clusters appear, so the instance's order need not be the keys' order.
    order = ["c000", "c001", "c004", "c002", "c003"]
    assert stale_span(["c004", "c001"], order) == ["c001", "c004"]
    assert stale_span(["c002", "c000"], order) == order[:4]
    assert stale_span(["c003"], order) == ["c003"]
    # A stale cluster the instance no longer has a partition for is not requested.
    assert stale_span(["c009"], order) == []
