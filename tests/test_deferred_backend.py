"""A merge stage whose every answer is cached starts no LLM; one with a missing answer does."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
from llm_support import Reply, ScriptedServer, in_order, merge_json, sample

from mergeit_core.merge.backends import DeferredBackend, open_backend
from mergeit_core.merge.cache import DuckDBResponseCache
from mergeit_core.merge.engine import MergeGroup, run_merges
from mergeit_core.merge.llm import LLMConfig, model_identity
from mergeit_core.models import KNOWN_MODELS


def test_cached_answers_open_nothing_and_a_missing_one_opens_the_backend_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MERGEIT_TEST_KEY", "sk-local")
    cache = DuckDBResponseCache(tmp_path / "cache.duckdb")
    groups = [MergeGroup(f"g{i}", "c000", (sample(f"g{i}", 1), sample(f"g{i}", 2))) for i in range(3)]
    with ScriptedServer(in_order(then=Reply(merge_json()))) as server:
        config = LLMConfig(backend="openai", model="scripted", base_url=server.base_url, api_key_env="MERGEIT_TEST_KEY")
        # Whether the backend opens is under test, not the answers: the merge gate stays off.
        with ExitStack() as stack:
            first = DeferredBackend(config, stack)
            assert run_merges(groups[:2], first, cache, config, gate=None).merged == 2 and first.opened
        assert server.request_count == 2
        with ExitStack() as stack:
            cached = DeferredBackend(config, stack)
            assert run_merges(groups[:2], cached, cache, config, gate=None).cache_hits == 2
            assert not cached.opened
            grown = DeferredBackend(config, stack)
            assert run_merges(groups, grown, cache, config, gate=None).merged == 3 and grown.opened
        assert server.request_count == 3


def test_the_model_identity_is_what_the_opened_backend_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llama = LLMConfig(backend="llama_cpp")
    assert model_identity(llama).endswith(".gguf")
    # A known model not fetched yet is named without fetching it.
    monkeypatch.setenv("MERGEIT_MODELS_DIR", str(tmp_path / "models"))
    assert model_identity(LLMConfig(backend="llama_cpp", model="qwen2.5-0.5b")) == KNOWN_MODELS["qwen2.5-0.5b"].file_name
    assert not (tmp_path / "models").exists()
    config = LLMConfig(backend="openai", model="some-model", base_url="http://127.0.0.1:9/v1")
    with open_backend(config) as backend:
        assert backend.model == model_identity(config)
