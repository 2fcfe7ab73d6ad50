"""The merge gate inside the pipeline: an endpoint answering a mix of genuine and degenerate merges
(taken from the labelled set in bench/merge_eval/) leaves only the genuine ones in merged_dataset;
every source of a rejected merge stays in the dataset as itself, with lineage intact, and the gate
judges cached answers again without asking the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from llm_support import Reply, ScriptedServer, merge_json, prompt_sources
from support import write_jsonl
from test_dagster_graph import assert_lineage_invariants, connect_rows, scalar

from mergeit_assets import pipeline
from mergeit_assets.resources import LLMResource, MergeitDuckDB, PipelineSettings
from mergeit_core.merge.gate import REASONS
from mergeit_core.records import Sample

CASES = Path(__file__).resolve().parents[1] / "bench" / "merge_eval" / "cases.jsonl"
# Pairs on unrelated topics, so the pipeline groups them as the labelled set does.
GENUINE = ("sample-009-hand", "mergeit-6k-006-hand", "mergeit-6k-010-hand", "mergeit-6k-031-hand")
DEGENERATE = ("sample-000-smollm2-135m", "sample-003-smollm2-135m", "sample-004-smollm2-135m")


def labelled(case_ids: tuple[str, ...]) -> list[dict[str, Any]]:
    by_id = {case["id"]: case for case in map(json.loads, CASES.read_text("utf-8").splitlines())}
    return [by_id[case_id] for case_id in case_ids]


def group_key(sources: list[dict[str, str]]) -> frozenset[str]:
    return frozenset(Sample.normalised(**s).source_id for s in sources)


def test_only_genuine_merges_reach_the_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERGEIT_TEST_KEY", "local")
    cases = labelled(GENUINE) + labelled(DEGENERATE)
    answers = {group_key(case["sources"]): case for case in cases}
    sources = write_jsonl(tmp_path / "sources" / "pairs.jsonl", [s for case in cases for s in case["sources"]])

    def answer(index: int, body: dict[str, Any]) -> Reply:
        # The prompt ends with the group's samples as JSON; a group the set does not know gets
        # a copy of its first sample, which the gate must reject too.
        members = prompt_sources(body)
        case = answers.get(group_key(members))
        merge = case["merge"] if case else members[0]
        return Reply(merge_json(merge["instruction"], merge["input"], merge["output"]))

    db_path = tmp_path / "mergeit.duckdb"
    resources = {
        "duckdb": MergeitDuckDB(database=str(db_path)),
        "pipeline": PipelineSettings(sources=[str(sources)], selection_budget=75, similarity_threshold=0.55),
    }
    with ScriptedServer(answer) as server, dg.instance_for_test() as instance:
        llm = LLMResource(backend="openai", base_url=server.base_url, model="scripted", api_key_env="MERGEIT_TEST_KEY")
        graph_run = pipeline.run_all(instance, {**resources, "llm": llm})
        assert graph_run.success
        asked = server.request_count

        groups = {
            frozenset(ids): (status, reason)
            for ids, status, reason in connect_rows(
                db_path,
                "SELECT list(p.source_id), m.status, m.gate_reason FROM merged_samples m "
                "JOIN merge_pairs p USING (group_id) GROUP BY m.group_id, m.status, m.gate_reason",
            )
        }
        assert asked == len(groups)
        expected = {group_key(c["sources"]): c for c in cases}
        formed = set(groups) & set(expected)
        # The pipeline formed the labelled pairs (else this test would prove little).
        assert sum(expected[g]["label"] == "genuine" for g in formed) >= 3
        assert sum(expected[g]["label"] != "genuine" for g in formed) >= 2
        for key, (status, reason) in groups.items():
            case = expected.get(key)
            if case is not None and case["label"] == "genuine":
                assert (status, reason) == ("merged", None), case["id"]
            else:
                assert status == "rejected" and reason in REASONS, (case or {}).get("id")
        # The figures are stored on every row the gate judged: one coverage per member.
        assert scalar(db_path, "SELECT count(*) FROM merged_samples WHERE len(gate_instruction_coverage) <> 2 "
                               "OR gate_copy_similarity IS NULL OR gate_repetition IS NULL") == 0
        metadata = graph_run.results[1].asset_materializations_for_node("merged_samples")[0].metadata
        rejected = sum(status == "rejected" for status, _ in groups.values())
        assert metadata["run_rejected_by_gate"].value == rejected
        assert sum(metadata["run_gate_reasons"].value.values()) == rejected

        # Only the genuine merges are in the dataset; a rejected merge's sources are there as themselves.
        genuine = {c["merge"]["instruction"] for c in cases if c["label"] == "genuine"}
        kept = {i for (i,) in connect_rows(db_path, "SELECT instruction FROM merged_dataset WHERE origin = 'merged'")}
        assert kept and kept <= genuine
        assert scalar(db_path, """
            SELECT count(*) FROM merged_samples m JOIN merge_pairs p USING (group_id)
            JOIN source_instructions s USING (source_id)
            LEFT JOIN merged_dataset d ON d.sample_id = 's' || s.source_id AND d.origin = 'selected'
                 AND d.instruction = s.instruction AND d.input = s.input AND d.output = s.output
            WHERE m.status = 'rejected' AND d.sample_id IS NULL""") == 0
        assert_lineage_invariants(db_path)

        # The gate runs on cached answers too: turned off, it keeps every answer, and nothing is asked.
        open_gate = LLMResource(backend="openai", base_url=server.base_url, model="scripted",
                                api_key_env="MERGEIT_TEST_KEY", merge_gate=False)
        pipeline.run_all(instance, {**resources, "llm": open_gate})
        assert server.request_count == asked
    assert scalar(db_path, "SELECT count(*) FROM merged_samples WHERE status <> 'merged' OR gate_reason IS NOT NULL") == 0
    assert scalar(db_path, "SELECT count(*) FROM merged_dataset WHERE origin = 'merged'") == len(groups)
    assert_lineage_invariants(db_path)
