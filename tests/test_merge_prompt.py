"""Merge and score prompts: message layout, schemas and the parsers' verdicts."""

from __future__ import annotations

import json
import re

import pytest

from mergeit_core.merge.prompt import (
    _FEW_SHOT,
    MERGED_SAMPLE_SCHEMA,
    SCORE_SCHEMA,
    InvalidMergeError,
    InvalidScoreError,
    build_merge_messages,
    build_score_messages,
    parse_merged_sample,
    parse_score,
)
from mergeit_core.records import Sample

SOURCES = (
    Sample("List three primary colours.", "", "Red, blue and yellow."),
    Sample("Name a colour made by mixing two primaries.", "blue + yellow", "Green."),
)


def test_merge_messages_are_system_the_examples_then_the_sources() -> None:
    messages = build_merge_messages(SOURCES)

    assert [message["role"] for message in messages] == ["system"] + ["user", "assistant"] * len(_FEW_SHOT) + ["user"]
    final = messages[-1]["content"]
    for source in SOURCES:
        for value in (source.instruction, source.output):
            assert value in final
    assert "blue + yellow" in final
    assert final.index(SOURCES[0].instruction) < final.index(SOURCES[1].instruction)


def test_the_worked_examples_are_valid_merges_of_their_sources() -> None:
    messages = build_merge_messages(SOURCES)
    examples = list(zip(messages[1:-1:2], messages[2:-1:2], strict=True))

    for user, assistant in examples:
        shown_sources = json.loads(user["content"].split("\n", 1)[1].rsplit("\n", 1)[0])
        merged = parse_merged_sample(assistant["content"])
        assert len(shown_sources) >= 2
        assert len(merged.output) > max(len(source["output"]) for source in shown_sources)
    merges = [parse_merged_sample(assistant["content"]) for _, assistant in examples]
    assert any(merge.input for merge in merges) and any(not merge.input for merge in merges)
    assert any(len(json.loads(user["content"].split("\n", 1)[1].rsplit("\n", 1)[0])) > 2 for user, _ in examples)


def test_the_worked_examples_share_no_phrase_a_model_could_copy() -> None:
    # A phrase common to two examples' instructions is the one a small model learns to repeat.
    def phrases(text: str) -> set[tuple[str, ...]]:
        words = re.findall(r"[a-z0-9]+", text.lower())
        return {tuple(words[i : i + 4]) for i in range(len(words) - 3)}

    instructions = [phrases(merge.instruction) for _, merge in _FEW_SHOT]
    for i, own in enumerate(instructions):
        for other in instructions[i + 1 :]:
            assert not own & other


def test_the_request_restates_that_every_task_is_asked_for() -> None:
    assert build_merge_messages(SOURCES)[-1]["content"].endswith("asks for both tasks, and its complete answer.")
    three = (*SOURCES, Sample("Name a secondary colour.", "", "Purple."))
    assert "asks for all 3 tasks" in build_merge_messages(three)[-1]["content"]


def test_a_merge_needs_two_sources() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        build_merge_messages(SOURCES[:1])


def test_merged_sample_schema_requires_exactly_three_strings() -> None:
    assert MERGED_SAMPLE_SCHEMA["type"] == "object"
    assert MERGED_SAMPLE_SCHEMA["required"] == ["instruction", "input", "output"]
    assert MERGED_SAMPLE_SCHEMA["additionalProperties"] is False
    assert {name: spec["type"] for name, spec in MERGED_SAMPLE_SCHEMA["properties"].items()} == {
        "instruction": "string",
        "input": "string",
        "output": "string",
    }


def test_parse_merged_sample_normalises_and_accepts_an_empty_input() -> None:
    content = json.dumps({"instruction": "  Do both.\r\n", "input": "", "output": "Done: one, two. "})

    assert parse_merged_sample(content) == Sample("Do both.", "", "Done: one, two.")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("Here is your merged sample!", "invalid JSON"),
        ('{"instruction": "a", "input": "", "output": "b"', "invalid JSON"),
        ('["a", "", "b"]', "expected a JSON object, got list"),
        ('{"instruction": "a", "output": "b"}', "missing field(s): input"),
        ("{}", "missing field(s): instruction, input, output"),
        ('{"instruction": "a", "input": null, "output": "b"}', "'input' is NoneType, not a string"),
        ('{"instruction": "a", "input": "", "output": 3}', "'output' is int, not a string"),
        ('{"instruction": " \\n ", "input": "", "output": "b"}', "'instruction' is empty"),
        ('{"instruction": "a", "input": "x", "output": ""}', "'output' is empty"),
    ],
)
def test_parse_merged_sample_says_why_it_rejects(content: str, reason: str) -> None:
    with pytest.raises(InvalidMergeError) as raised:
        parse_merged_sample(content)
    assert reason in str(raised.value)


def test_score_prompt_shows_the_sample_and_the_schema_bounds_the_score() -> None:
    messages = build_score_messages(SOURCES[1])

    assert [message["role"] for message in messages] == ["system", "user"]
    assert "blue + yellow" in messages[1]["content"]
    assert SCORE_SCHEMA["properties"]["score"] == {"type": "integer", "minimum": 1, "maximum": 10}
    assert SCORE_SCHEMA["required"] == ["score"] and SCORE_SCHEMA["additionalProperties"] is False


@pytest.mark.parametrize("content", ['{"score": 1}', '{"score": 10}', ' {"score": 7} '])
def test_parse_score_accepts_integers_in_range(content: str) -> None:
    assert parse_score(content) == json.loads(content)["score"]


@pytest.mark.parametrize(
    "content",
    ['{"score": 0}', '{"score": 11}', '{"score": "7"}', '{"score": 7.5}', '{"score": true}', "{}", "7"],
)
def test_parse_score_rejects_everything_else(content: str) -> None:
    with pytest.raises(InvalidScoreError):
        parse_score(content)
