"""vLLM's offline engine, batched, with structured outputs. Needs vLLM (and a GPU it can use).

The model defaults to SmolLM2-135M-Instruct from the Hugging Face hub (or its local cache);
MERGEIT_VLLM_MODEL names another model or a local directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (optional extra 'vllm'; GPU machines only)")

from mergeit_core.merge.backends import open_backend
from mergeit_core.merge.cache import DuckDBResponseCache
from mergeit_core.merge.engine import MergeGroup, run_merges
from mergeit_core.merge.llm import LLMConfig
from mergeit_core.merge.vllm_backend import VLLMOfflineBackend
from mergeit_core.records import Sample

pytestmark = pytest.mark.llm

MODEL = os.environ.get("MERGEIT_VLLM_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct")
CODE_SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": ["ZEBRA-42", "QUOKKA-7"]}},
    "required": ["verdict"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def backend() -> Iterator[VLLMOfflineBackend]:
    from vllm.sampling_params import StructuredOutputsParams  # the API this code relies on

    assert StructuredOutputsParams is not None
    with open_backend(LLMConfig(backend="vllm", model=MODEL, max_tokens=200)) as opened:
        assert isinstance(opened, VLLMOfflineBackend)
        yield opened


def test_structured_outputs_constrain_a_batch(backend: VLLMOfflineBackend) -> None:
    question = [{"role": "user", "content": "What is the capital of France?"}]

    answers = backend.chat_batch([question, question, question], CODE_SCHEMA)

    assert len(answers) == 3
    assert all(json.loads(answer.content)["verdict"] in {"ZEBRA-42", "QUOKKA-7"} for answer in answers)


def test_run_merges_batches_the_partition(backend: VLLMOfflineBackend, tmp_path: Path) -> None:
    groups = [
        MergeGroup(
            f"g{i}",
            "c0",
            (Sample(f"Name {n} fruits.", "", "Apple."), Sample(f"Name {n} vegetables.", "", "Carrot.")),
        )
        for i, n in enumerate(("two", "three", "four"))
    ]
    config = LLMConfig(backend="vllm", model=MODEL, max_tokens=200)

    report = run_merges(groups, backend, DuckDBResponseCache(tmp_path / "m.duckdb"), config)

    # Schema-valid answers, whether the merge gate keeps them or not.
    assert report.merged + report.rejected >= 2, [outcome.error for outcome in report.outcomes]
