"""One configuration, three ways in: environment variables, Dagster run config, the CLI."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from mergeit_assets import pipeline
from mergeit_assets.resources import LLMResource, MergeitDuckDB, PipelineSettings, build_resources
from mergeit_core.settings import BUNDLED_SAMPLE


def test_environment_variables_set_the_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MERGEIT_SOURCES", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    monkeypatch.setenv("MERGEIT_BUDGET", "30")
    monkeypatch.setenv("MERGEIT_THRESHOLD", "0.7")
    monkeypatch.setenv("MERGEIT_LLM_BACKEND", "openai")
    monkeypatch.setenv("MERGEIT_LLM_MODEL", "gpt-4o")
    monkeypatch.setenv("MERGEIT_LLM_API_KEY_ENV", "MY_KEY")
    pipeline_settings, llm = PipelineSettings.from_env(), LLMResource.from_env()
    assert pipeline_settings.sources == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert (pipeline_settings.selection_budget, pipeline_settings.similarity_threshold) == (30, 0.7)
    config = llm.to_config()
    assert (config.backend, config.model, config.api_key_env) == ("openai", "gpt-4o", "MY_KEY")


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MERGEIT_SOURCES", "MERGEIT_BUDGET", "MERGEIT_THRESHOLD", "MERGEIT_LLM_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    settings = PipelineSettings.from_env()
    assert settings.sources == [str(BUNDLED_SAMPLE)]
    assert (settings.selection_budget, settings.similarity_threshold, settings.max_group_size) == (75, 0.55, 2)
    assert LLMResource.from_env().to_config().temperature == 0.25


def test_run_config_overrides_resources_as_the_launchpad_does(tmp_path: Path) -> None:
    resources = {
        "duckdb": MergeitDuckDB(database=str(tmp_path / "m.duckdb")),
        "pipeline": PipelineSettings(sources=[str(tmp_path / "missing")]),
        "llm": LLMResource(),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            pipeline.ALL_ASSETS, selection=[pipeline.selection.source_instructions], instance=instance,
            resources=resources,
            run_config={"resources": {"pipeline": {"config": {"sources": [str(BUNDLED_SAMPLE)]}}}},
        )
    assert result.asset_materializations_for_node("source_instructions")[0].metadata["dagster/row_count"].value == 308


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"selection_budget": 0}, "budget must be at least 1 row per cluster, got 0"),
        ({"embed_batch_size": 0}, "embed batch size must be at least 1 text, got 0"),
    ],
)
def test_run_config_values_obey_the_same_rules(tmp_path: Path, setting: dict, message: str) -> None:
    with dg.instance_for_test() as instance, pytest.raises(dg.DagsterResourceFunctionError) as failure:
        dg.materialize(
            pipeline.ALL_ASSETS, selection=[pipeline.selection.source_instructions], instance=instance,
            resources=build_resources(tmp_path / "m.duckdb"),
            run_config={"resources": {"pipeline": {"config": {"sources": [str(BUNDLED_SAMPLE)], **setting}}}},
        )
    assert message in str(failure.value.__cause__)


def test_overrides_win_over_the_environment_in_new_resources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MERGEIT_BUDGET", "30")
    monkeypatch.setenv("MERGEIT_LLM_MODEL", "from-env")
    monkeypatch.setenv("MERGEIT_LLM_BACKEND", "openai")
    built = build_resources(tmp_path / "x.duckdb", pipeline={"selection_budget": 12, "sources": None}, llm={"model": "m"})
    assert built["pipeline"].selection_budget == 12 and built["llm"].model == "m"
    assert built["duckdb"].database == str((tmp_path / "x.duckdb").resolve())
