"""Merge and score prompts: message layout, schemas and the parsers' verdicts."""

from __future__ import annotations

import json

import pytest

from mergeit_core.merge.prompt import (
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


def test_merge_messages_are_system_two_examples_then_the_sources() -> None:
    messages = build_merge_messages(SOURCES)

    assert [message["role"] for message in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    final = messages[-1]["content"]
    for source in SOURCES:
        for value in (source.instruction, source.output):
            assert value in final
    assert "blue + yellow" in final
    assert final.index(SOURCES[0].instruction) < final.index(SOURCES[1].instruction)


def test_the_worked_examples_are_valid_merges_of_their_sources() -> None:
    messages = build_merge_messages(SOURCES)

    for user, assistant in ((messages[1], messages[2]), (messages[3], messages[4])):
        example_sources = json.loads(user["content"].split("\n", 1)[1])
        merged = parse_merged_sample(assistant["content"])
        assert len(example_sources) >= 2
        assert len(merged.output) > max(len(source["output"]) for source in example_sources)
    assert parse_merged_sample(messages[4]["content"]).input == ""  # one example shows an empty input


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
