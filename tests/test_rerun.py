"""`run_all` on a rerun: nothing changed -> nothing runs; new rows -> only the moved partitions;
other settings, another writer or an unanswered merge -> no shortcut."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from llm_support import Fail, Reply, ScriptedServer, in_order, merge_json
from support import bundled_rows, write_jsonl

from mergeit_assets import pipeline
from mergeit_assets.resources import LLMResource, MergeitDuckDB, PipelineSettings
from mergeit_core import embed, fingerprint, stages
from mergeit_core.store import connect

KEY_ENV = "MERGEIT_TEST_KEY"


@pytest.fixture
def scripted_llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    monkeypatch.setenv(KEY_ENV, "sk-local")
    with ScriptedServer(in_order(then=Reply(merge_json()))) as server:
        yield server


def resources_for(db: Path, folder: Path, server: ScriptedServer, **pipeline_settings: object) -> dict[str, object]:
    return {
        "duckdb": MergeitDuckDB(database=str(db)),
        "pipeline": PipelineSettings(sources=[str(folder)], **{"selection_budget": 10, **pipeline_settings}),
        "llm": LLMResource(backend="openai", model="scripted", base_url=server.base_url, api_key_env=KEY_ENV, max_retries=0),
    }


def merged_dataset(db: Path) -> list[tuple]:
    with connect(db) as conn:
        return conn.execute("SELECT sample_id, origin, instruction FROM merged_dataset ORDER BY sample_id").fetchall()


def test_an_unchanged_rerun_starts_no_run_and_computes_nothing(
    tmp_path: Path, scripted_llm: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, db = tmp_path / "sources", tmp_path / "mergeit.duckdb"
    write_jsonl(folder / "part1.jsonl", bundled_rows()[:90])
    resources = resources_for(db, folder, scripted_llm)
    with dg.instance_for_test() as instance:
        first = pipeline.run_all(instance, resources)
        assert first.success and first.unchanged_since is None and first.partitions_run == first.partitions > 0
        dataset, requests, runs = merged_dataset(db), scripted_llm.request_count, len(instance.get_runs())

        def no_embedding(*args: object, **kwargs: object) -> None:
            raise AssertionError("an unchanged rerun must not embed")

        monkeypatch.setattr(embed, "embed_texts", no_embedding)
        monkeypatch.setattr(embed, "load_model", no_embedding)
        again = pipeline.run_all(instance, resources)
        assert again.unchanged_since is not None and again.unchanged_since.run_id == first.results[-1].run_id
        assert again.results == [] and len(instance.get_runs()) == runs
        assert scripted_llm.request_count == requests and merged_dataset(db) == dataset
        # The check itself is on record, as an observation of the final asset.
        observed = instance.fetch_observations(dg.AssetKey("merged_dataset"), limit=5).records
        assert [r.asset_observation.metadata["unchanged_since_run"].value for r in observed] == [first.results[-1].run_id]

        # The same bytes written anew are no change; another writer (here the UI rebuilding the
        # final asset alone) is, even with the same files and settings.
        write_jsonl(folder / "part1.jsonl", bundled_rows()[:90])
        assert pipeline.run_all(instance, resources).unchanged_since is not None
        assert pipeline.materialize(pipeline.DOWNSTREAM, instance, resources).success
        monkeypatch.undo()
        monkeypatch.setenv(KEY_ENV, "sk-local")
        after_writer = pipeline.run_all(instance, resources)
        assert after_writer.unchanged_since is None and after_writer.partitions_run == after_writer.partitions
        assert merged_dataset(db) == dataset


def test_new_rows_rerun_only_moved_partitions_and_new_settings_rerun_all(
    tmp_path: Path, scripted_llm: ScriptedServer
) -> None:
    folder, db = tmp_path / "sources", tmp_path / "mergeit.duckdb"
    rows = bundled_rows()
    write_jsonl(folder / "part1.jsonl", rows[:150])
    with dg.instance_for_test() as instance:
        assert pipeline.run_all(instance, resources_for(db, folder, scripted_llm)).success
        write_jsonl(folder / "part2.jsonl", rows[150:152])
        grown = pipeline.run_all(instance, resources_for(db, folder, scripted_llm))
        assert grown.unchanged_since is None and grown.success
        assert 0 < grown.partitions_run <= grown.partitions and stages.stale_partitions(db) == []
        # The partitions outside the rerun span were materialized once, by the first run.
        rerun = set(grown.results[1].dagster_run.tags.values())
        keys = instance.get_dynamic_partitions("clusters")
        first, last = keys.index(min(rerun & set(keys))), keys.index(max(rerun & set(keys)))
        assert last - first + 1 == grown.partitions_run
        for key in keys[:first] + keys[last + 1:]:
            events = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("selected_subset"), asset_partitions=[key]), limit=5
            ).records
            assert len(events) == 1
        # Every partition is current afterwards, so the next rerun is free again.
        assert pipeline.run_all(instance, resources_for(db, folder, scripted_llm)).unchanged_since is not None

        stricter = pipeline.run_all(instance, resources_for(db, folder, scripted_llm, similarity_threshold=0.6))
        assert stricter.unchanged_since is None and stricter.partitions_run == stricter.partitions
        with connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM merge_pairs WHERE similarity <= 0.6").fetchall()[0][0] == 0


def test_a_merge_the_llm_never_answered_keeps_the_next_run_from_being_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-local")
    folder, db = tmp_path / "sources", tmp_path / "mergeit.duckdb"
    write_jsonl(folder / "part1.jsonl", bundled_rows()[:200])
    with ScriptedServer(in_order(then=Fail(500))) as down, dg.instance_for_test() as instance:
        assert pipeline.run_all(instance, resources_for(db, folder, down, selection_budget=75)).success
        with connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM merged_samples WHERE status = 'failed'").fetchall()[0][0] > 0
        assert fingerprint.last_complete_run(db) is None
        assert pipeline.run_all(instance, resources_for(db, folder, down, selection_budget=75)).unchanged_since is None
