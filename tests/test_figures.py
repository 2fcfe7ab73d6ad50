"""What a person sees of a run: pictures, merges beside their sources and each cluster's own
figures in the materializations, and the dataset card beside an export."""

from __future__ import annotations

import base64
import importlib.util
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from llm_support import Reply, ScriptedServer, concatenated_merge, last_user_message
from support import bundled_rows, write_jsonl
from test_dagster_graph import scalar

from mergeit_assets import pipeline
from mergeit_assets.resources import LLMResource, MergeitDuckDB, PipelineSettings
from mergeit_core.merge.prompt import PROMPT_VERSION
from mergeit_core.store import connect

IMAGE = re.compile(r"^!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)$")


def unreadable_for_some(index: int, body: dict) -> Reply:
    """A valid merge for most groups; prose (an invalid answer, so a failed group) for about a
    quarter of them, chosen by content so every re-ask of a group gets the same."""
    text = last_user_message(body)
    if zlib.crc32(text.encode()) % 4 == 0:
        return Reply("I cannot merge these.")
    return concatenated_merge(index, body)  # a merge the gate keeps


class Run:
    def __init__(self, workdir: Path, instance: dg.DagsterInstance, server: ScriptedServer) -> None:
        self.workdir, self.instance, self.server = workdir, instance, server
        self.db = workdir / "mergeit.duckdb"

    def latest(self, asset: str, partition: str | None = None) -> dict:
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
            limit=1,
        ).records
        return records[0].asset_materialization.metadata


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    workdir = tmp_path_factory.mktemp("figures")
    sources = write_jsonl(workdir / "sources" / "part1.jsonl", bundled_rows()[:120])
    with pytest.MonkeyPatch.context() as patch, ScriptedServer(unreadable_for_some) as server, \
            dg.instance_for_test() as instance:
        patch.setenv("MERGEIT_TEST_KEY", "local")
        run = Run(workdir, instance, server)
        resources = {
            "duckdb": MergeitDuckDB(database=str(run.db)),
            "pipeline": PipelineSettings(sources=[str(sources)], selection_budget=12, similarity_threshold=0.35),
            "llm": LLMResource(backend="openai", base_url=server.base_url, model="scripted",
                               api_key_env="MERGEIT_TEST_KEY", concurrency=4),
        }
        assert pipeline.run_all(instance, resources).success
        yield run


def png_size(value: dg.MetadataValue) -> tuple[int, int]:
    """(width, height) of a markdown data: image, read from the PNG header."""
    match = IMAGE.match(value.value)
    assert match, value.value[:120]
    png = base64.b64decode(match.group(1))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def test_cluster_map_and_size_histogram_are_attached_to_topic_clusters(finished: Run) -> None:
    metadata = finished.latest("topic_clusters")
    assert png_size(metadata["cluster_map"]) == (512, 384)
    assert png_size(metadata["cluster_size_histogram"]) == (512, 288)


def test_funnel_outcomes_and_selection_map_are_attached_to_merged_dataset(finished: Run) -> None:
    metadata = finished.latest("merged_dataset")
    for name in ("funnel", "merge_outcomes", "cluster_map_with_selection"):
        width, height = png_size(metadata[name])
        assert width == 512 and height > 100


def test_each_cluster_partition_shows_its_own_figures(finished: Run) -> None:
    keys = finished.instance.get_dynamic_partitions("clusters")
    assert len(keys) >= 2
    seen = {}
    for key in keys:
        metadata = finished.latest("merged_samples", key)
        groups = scalar(finished.db, "SELECT count(*) FROM merged_samples WHERE cluster_key = ?", [key])
        merged = scalar(finished.db, "SELECT count(*) FROM merged_samples WHERE cluster_key = ? AND status = 'merged'", [key])
        assert metadata["cluster_size"].value == scalar(finished.db, "SELECT size FROM clusters WHERE cluster_key = ?", [key])
        assert metadata["selected"].value == scalar(finished.db, "SELECT count(*) FROM selected_subset WHERE cluster_key = ?", [key])
        assert metadata["groups"].value == groups and metadata["dagster/row_count"].value == groups
        assert metadata["merged"].value == merged
        assert metadata["not_kept"].value == groups - merged == sum(metadata["not_kept_by_reason"].value.values())
        selection = finished.latest("selected_subset", key)
        assert selection["selected"].value == metadata["selected"].value
        pairs = finished.latest("merge_pairs", key)
        assert pairs["groups"].value == groups
        seen[key] = (metadata["cluster_size"].value, groups, metadata["requests"].value)
    assert len(set(seen.values())) > 1, seen  # partitions tell clusters apart
    # Every request sent is counted in exactly one cluster (no quality gate: merge requests only).
    assert sum(requests for _, _, requests in seen.values()) == finished.server.request_count
    totals = finished.latest("merged_samples", keys[0])
    assert totals["run_groups"].value == sum(groups for _, groups, _ in seen.values())


def test_merges_are_shown_beside_their_sources(finished: Run) -> None:
    keys = finished.instance.get_dynamic_partitions("clusters")
    tables = {key: finished.latest("merged_samples", key)["side_by_side"].value for key in keys}
    assert any("| merged (" in t for t in tables.values()), tables
    assert any("| failed: invalid answer after 3 asks (" in t for t in tables.values()), tables
    for key, table in tables.items():
        # The table opens with the cluster's first kept merge (else its first group), beside the
        # source rows it was made from, with their file and line.
        first_group = scalar(
            finished.db,
            "SELECT coalesce(min(group_id) FILTER (WHERE status = 'merged'), min(group_id)) FROM merged_samples "
            "WHERE cluster_key = ?", [key],
        )
        if first_group is None:
            assert table == "_no merge groups in these clusters_"
            continue
        assert table.startswith("| outcome | merged sample | source 1 | source 2 |")
        instruction, row = finished_source(finished.db, first_group)
        assert " ".join(instruction.split())[:40] in table.replace("\\", "")
        assert f"part1.jsonl:{row}" in table


def finished_source(db: Path, group_id: str) -> tuple[str, int]:
    with connect(db) as conn:
        return conn.execute(
            "SELECT s.instruction, s.source_row FROM merge_pairs p JOIN source_instructions s USING (source_id) "
            "WHERE p.group_id = ? AND p.member_index = 0", [group_id],
        ).fetchall()[0]


def mergeit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mergeit_assets.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_export_writes_a_dataset_card(finished: Run) -> None:
    out = finished.workdir / "export"
    exported = mergeit("export", str(out / "train.jsonl"), "--db", str(finished.db), cwd=finished.workdir)
    assert exported.returncode == 0, exported.stderr
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"dataset card {out / 'README.md'}" in exported.stdout
    final = scalar(finished.db, "SELECT count(*) FROM merged_dataset")
    assert f"holds **{final:,}**" in card and "data_files: train.jsonl" in card
    file_hash = scalar(finished.db, "SELECT content_hash FROM source_files")
    assert f"`{file_hash}`" in card and "| part1.jsonl | jsonl |" in card
    assert "sentence-transformers/all-MiniLM-L6-v2" in card
    assert "budget 12" in card and "threshold 0.35" in card and "max_group_size 2" in card
    assert "scripted via openai" in card and f"prompt {PROMPT_VERSION}" in card
    failed = scalar(finished.db, "SELECT count(*) FROM merged_samples WHERE status = 'failed'")
    assert f"| failed: invalid answer after 3 asks | {failed} |" in card
    sample = scalar(finished.db, "SELECT min(sample_id) FROM merged_dataset WHERE origin = 'merged'")
    assert f"mergeit lineage {sample}" in card
    # The card is mergeit's: a second export rewrites it in place.
    again = mergeit("export", str(out / "train.parquet"), "--db", str(finished.db), cwd=finished.workdir)
    assert again.returncode == 0 and "data_files: train.parquet" in (out / "README.md").read_text(encoding="utf-8")


def test_a_readme_of_the_project_is_never_overwritten(finished: Run) -> None:
    out = finished.workdir / "project"
    out.mkdir()
    (out / "README.md").write_text("# my project\n")
    exported = mergeit("export", str(out / "data.jsonl"), "--db", str(finished.db), cwd=finished.workdir)
    assert exported.returncode == 0, exported.stderr
    assert (out / "README.md").read_text() == "# my project\n"
    assert "data_files: data.jsonl" in (out / "data.README.md").read_text(encoding="utf-8")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="the `datasets` package is not installed")
@pytest.mark.parametrize("suffix,builder", [(".jsonl", "json"), (".parquet", "parquet")])
def test_exports_load_with_hugging_face_datasets(finished: Run, suffix: str, builder: str, tmp_path: Path) -> None:
    import datasets

    out = tmp_path / f"train{suffix}"
    assert mergeit("export", str(out), "--db", str(finished.db), cwd=tmp_path).returncode == 0
    loaded = datasets.load_dataset(builder, data_files=str(out), cache_dir=str(tmp_path / "hf_cache"))["train"]
    assert loaded.num_rows == scalar(finished.db, "SELECT count(*) FROM merged_dataset")
    assert loaded.column_names == ["instruction", "input", "output"]
    first = scalar(finished.db, "SELECT instruction FROM merged_dataset ORDER BY sample_id LIMIT 1")
    assert loaded[0]["instruction"] == first
