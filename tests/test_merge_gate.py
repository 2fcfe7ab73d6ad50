"""The merge gate on hand-made cases of each kind, with the real MiniLM: a genuine merge is kept,
each degenerate one is rejected with the reason that names its defect."""

from __future__ import annotations

import pytest
from llm_support import merge_json

from mergeit_core.merge.cache import DuckDBResponseCache
from mergeit_core.merge.engine import MergeGroup, run_merges
from mergeit_core.merge.gate import (
    ANSWER_AS_INSTRUCTION,
    COPY_OF_EXAMPLE,
    COPY_OF_SOURCE,
    FIGURES,
    INCOMPLETE_COVERAGE,
    LIST_FIGURES,
    OUTPUT_TOO_SHORT,
    PLACEHOLDER,
    REPETITION,
    TRUNCATED,
    GateThresholds,
    evaluate_merge,
)
from mergeit_core.merge.llm import ChatResponse, LLMConfig
from mergeit_core.merge.prompt import _FEW_SHOT
from mergeit_core.records import Sample

STUDY = (
    Sample(
        "Give two tips for staying focused while studying.",
        "",
        "1. Put your phone in another room so notifications cannot pull you away.\n"
        "2. Work in 25-minute blocks with a five-minute break after each one.",
    ),
    Sample(
        "Why is getting enough sleep important for students?",
        "",
        "During sleep the brain consolidates what was learned during the day, so well-rested students "
        "remember more. Sleep also restores attention and mood, which makes it easier to concentrate in class.",
    ),
)
STUDY_MERGED = Sample(
    "Explain why getting enough sleep matters for students, then give two practical tips for staying "
    "focused while studying.",
    "",
    "Why sleep matters: during sleep the brain consolidates what was learned during the day, so "
    "well-rested students remember more of it. Sleep also restores attention and mood, which makes it "
    "far easier to concentrate in class and while revising.\n"
    "Two tips for staying focused:\n"
    "1. Put your phone in another room so notifications cannot pull you away.\n"
    "2. Work in 25-minute blocks with a five-minute break after each one, and stop before you are exhausted.",
)

TRANSLATE = (
    Sample("Translate the sentence into French.", "The library opens at nine.", "La bibliothèque ouvre à neuf heures."),
    Sample("Translate the sentence into Spanish.", "The museum is closed on Mondays.", "El museo está cerrado los lunes."),
)
TRANSLATE_MERGED = Sample(
    "Translate the first sentence below into French and the second one into Spanish.",
    "1. The library opens at nine.\n2. The museum is closed on Mondays.",
    "1. French: La bibliothèque ouvre à neuf heures.\n2. Spanish: El museo está cerrado los lunes.",
)

# One answer is a word, the other a paragraph: the merged output overlaps the long answer almost
# entirely and still answers both.
FRANCE = (
    Sample("What is the capital of France?", "", "Paris."),
    Sample(
        "Describe the Eiffel Tower in a few sentences.",
        "",
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. It was designed by "
        "Gustave Eiffel's company and completed in 1889 for the World's Fair. At 330 metres it was the tallest "
        "man-made structure in the world for four decades, and it is now one of the most visited monuments anywhere.",
    ),
)
FRANCE_MERGED = Sample(
    "What is the capital of France? Describe its most famous landmark, the Eiffel Tower, in a few sentences.",
    "",
    "The capital of France is Paris. " + FRANCE[1].output,
)


@pytest.mark.parametrize(
    "sources, merged", [(STUDY, STUDY_MERGED), (TRANSLATE, TRANSLATE_MERGED), (FRANCE, FRANCE_MERGED)]
)
def test_genuine_merge_is_kept_with_its_figures(sources, merged) -> None:
    verdict = evaluate_merge(sources, merged)
    assert verdict.kept and verdict.reason is None, verdict.figures
    assert set(verdict.figures) == set(FIGURES)
    for name in LIST_FIGURES:
        assert len(verdict.figures[name]) == len(sources)  # one coverage per member


DEGENERATE = {
    "answer written as the instruction": (
        STUDY,
        Sample(
            "During sleep the brain consolidates what was learned, and putting your phone in another room "
            "keeps notifications from pulling you away while studying.",
            "",
            STUDY_MERGED.output,
        ),
        ANSWER_AS_INSTRUCTION,
    ),
    "a task that serves one source only": (
        STUDY,
        Sample(
            "List a few practical habits that make it easier to concentrate on schoolwork.",
            "",
            "1. Leave your phone in another room so that notifications cannot distract you.\n"
            "2. Study in 25-minute blocks with a five-minute break after each block.\n"
            "3. Set out everything you need on the desk before you begin.",
        ),
        INCOMPLETE_COVERAGE,
    ),
    "both tasks asked over one source's answer": (
        STUDY,
        Sample(STUDY_MERGED.instruction, "", STUDY[1].output),
        INCOMPLETE_COVERAGE,
    ),
    "a task about the given sentences with the sentences dropped": (
        TRANSLATE,
        Sample(
            "Translate the given sentence about the library into French and the one about the museum into Spanish.",
            "",
            TRANSLATE_MERGED.output,
        ),
        INCOMPLETE_COVERAGE,
    ),
    "a copy of one source": (STUDY, STUDY[1], COPY_OF_SOURCE),
    "a copy of a prompt example": (STUDY, _FEW_SHOT[1][1], COPY_OF_EXAMPLE),
    "a sentence said twice": (
        STUDY,
        Sample(
            STUDY_MERGED.instruction,
            "",
            "Sleep helps students remember what they learned and stay focused. Put your phone in another room. "
            "Sleep helps students remember what they learned and stay focused. Put your phone in another room.",
        ),
        REPETITION,
    ),
    "a placeholder left in": (
        STUDY,
        Sample(STUDY_MERGED.instruction, "", STUDY_MERGED.output + "\n3. [Insert a third tip here]"),
        PLACEHOLDER,
    ),
    "an output that answers nothing": (STUDY, Sample(STUDY_MERGED.instruction, "", "Sleep well and focus."), OUTPUT_TOO_SHORT),
}


@pytest.mark.parametrize("name", list(DEGENERATE))
def test_degenerate_merge_is_rejected_with_its_reason(name: str) -> None:
    sources, merged, reason = DEGENERATE[name]
    verdict = evaluate_merge(sources, merged)
    assert (verdict.kept, verdict.reason) == (False, reason), verdict.figures


def test_an_answer_cut_at_the_token_cap_is_truncated() -> None:
    assert evaluate_merge(STUDY, STUDY_MERGED, finish_reason="stop").kept
    verdict = evaluate_merge(STUDY, STUDY_MERGED, finish_reason="length")
    assert (verdict.kept, verdict.reason) == (False, TRUNCATED)


def test_a_placeholder_the_sources_already_have_is_not_one_the_merge_invented() -> None:
    letter = (
        Sample("Write a one-line greeting for a thank-you letter.", "", "Dear [Name], thank you so much for the lovely gift."),
        Sample("Write a closing line for a thank-you letter.", "", "With warm thanks and best wishes, [Your Name]"),
    )
    merged = Sample(
        "Write the opening greeting and the closing line of a thank-you letter for a gift.",
        "",
        "Opening: Dear [Name], thank you so much for the lovely gift you sent me.\n"
        "Closing: With warm thanks and best wishes, [Your Name]",
    )
    verdict = evaluate_merge(letter, merged)
    assert verdict.reason != PLACEHOLDER, verdict


def test_thresholds_move_the_line() -> None:
    short = DEGENERATE["an output that answers nothing"][1]
    assert evaluate_merge(STUDY, short).reason == OUTPUT_TOO_SHORT
    lenient = GateThresholds(min_output_ratio=0.0, min_output_coverage=-1.0, min_lexical_coverage=0.0)
    assert evaluate_merge(STUDY, short, thresholds=lenient).reason != OUTPUT_TOO_SHORT


def test_a_merge_needs_two_sources() -> None:
    with pytest.raises(ValueError, match="at least 2 sources"):
        evaluate_merge(STUDY[:1], STUDY_MERGED)


# The coverage checks that catch each shape: a pasted answer is caught by two, each on its own
# (word overlap with one source's output; the output's coverage of the other member's answer).
COVERAGE_CHECKS_OFF = {"max_output_copy_similarity": 1.01, "min_output_coverage": -1.0, "min_input_coverage": 0.0}


@pytest.mark.parametrize(
    "name, catching",
    [
        ("both tasks asked over one source's answer", ["max_output_copy_similarity", "min_output_coverage"]),
        ("a task about the given sentences with the sentences dropped", ["min_input_coverage"]),
    ],
)
def test_each_coverage_check_rejects_these_on_its_own(name: str, catching: list[str]) -> None:
    sources, merged, reason = DEGENERATE[name]
    assert evaluate_merge(sources, merged, thresholds=GateThresholds(**COVERAGE_CHECKS_OFF)).kept
    for check in catching:
        only_this_one = {k: v for k, v in COVERAGE_CHECKS_OFF.items() if k != check}
        assert evaluate_merge(sources, merged, thresholds=GateThresholds(**only_this_one)).reason == reason, check


class _AnswersStudyMerged:
    """A backend whose every merge is STUDY_MERGED."""

    backend = "fake"
    model = "fake-model"

    def __init__(self) -> None:
        self.calls = 0
        self.sampling_params = LLMConfig(backend="openai", model="fake-model").sampling_params()

    async def chat(self, messages, schema) -> ChatResponse:
        self.calls += 1
        return ChatResponse(merge_json(STUDY_MERGED.instruction, "", STUDY_MERGED.output), 5, 2)

    async def aclose(self) -> None:
        pass


def test_a_cached_answer_is_judged_again_from_its_stored_figures(tmp_path, monkeypatch) -> None:
    cache = DuckDBResponseCache(tmp_path / "cache.duckdb")
    config = LLMConfig(backend="openai", model="fake-model")
    group = [MergeGroup("g", "c", STUDY)]
    first = run_merges(group, _AnswersStudyMerged(), cache, config)
    assert first.outcomes[0].status == "merged"

    def no_embedding(*args, **kwargs):
        raise AssertionError("the stored figures should have been used")

    monkeypatch.setattr("mergeit_core.merge.engine.measure_merge", no_embedding)
    backend = _AnswersStudyMerged()
    again = run_merges(group, backend, cache, config)
    assert (backend.calls, again.outcomes[0].status) == (0, "merged")
    assert again.outcomes[0].gate == first.outcomes[0].gate
    # Other thresholds, the same stored figures: a new verdict at no cost.
    strict = run_merges(group, backend, cache, config, gate=GateThresholds(min_output_ratio=5.0))
    assert (strict.outcomes[0].status, strict.outcomes[0].gate.reason) == ("rejected", OUTPUT_TOO_SHORT)
