"""Prompts, JSON schemas and parsers for the two LLM calls: merging a group and scoring a sample.

Bump PROMPT_VERSION / SCORE_PROMPT_VERSION whenever a prompt, example or schema changes: the
versions are part of every cache key, so old answers are then asked again instead of reused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mergeit_core.records import FIELDS, Sample

PROMPT_VERSION = "merge-v2"
SCORE_PROMPT_VERSION = "score-v1"

MERGED_SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {field: {"type": "string"} for field in FIELDS},
    "required": list(FIELDS),
    "additionalProperties": False,
}

MIN_SCORE, MAX_SCORE = 1, 10
SCORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": MIN_SCORE, "maximum": MAX_SCORE}},
    "required": ["score"],
    "additionalProperties": False,
}


class InvalidResponseError(ValueError):
    """The model answered, but not with what the schema asks for."""


class InvalidMergeError(InvalidResponseError):
    pass


class InvalidScoreError(InvalidResponseError):
    pass


MERGE_SYSTEM_PROMPT = """\
You merge instruction-tuning samples on related topics. Given two or more samples, each with an \
instruction, an optional input and an output, write ONE new sample that does the work of all of them:
- "instruction": a request to an assistant (an imperative or a question), never its answer. It asks \
for the task of EVERY given sample, with their details (names, numbers, words, formats), as one \
coherent task.
- "input": the material the new task works on (every given input it needs, labelled when there are \
several), or an empty string.
- "output": a complete, correct answer to every part of the new instruction, in order, reusing the \
correct content of the given outputs. It is longer than each given output.
Do not answer only one sample's task, do not copy a sample, do not repeat a sentence, and never \
mention samples, sources or merging.
Reply with a JSON object with exactly the string fields "instruction", "input" and "output"."""

# Worked merges, varied on purpose (inputs to combine, a three-way merge, code, arithmetic,
# writing) so a small model learns the move, not a phrase to copy. None resembles a task of the
# bundled sample: the merge gate rejects answers that copy an example.
_FEW_SHOT: tuple[tuple[tuple[Sample, ...], Sample], ...] = (
    (
        (
            Sample(
                "Classify the sentiment of this product review as positive or negative.",
                "The battery lasts all day and the screen is gorgeous.",
                "Positive",
            ),
            Sample(
                "Identify the main complaint in this customer review.",
                "Delivery took three weeks and the box arrived crushed.",
                "The main complaint is the delivery: it took three weeks and the package arrived damaged.",
            ),
        ),
        Sample(
            "For each customer review below, classify its sentiment as positive or negative and "
            "state the main point the customer makes (for a negative review, the main complaint).",
            "Review A: The battery lasts all day and the screen is gorgeous.\n"
            "Review B: Delivery took three weeks and the box arrived crushed.",
            "Review A: positive. The customer praises the all-day battery life and the gorgeous "
            "screen.\n"
            "Review B: negative. The main complaint is the delivery: it took three weeks and the "
            "box arrived crushed.",
        ),
    ),
    (
        (
            Sample("Write a Python function that reverses a string.", "", "def reverse(text):\n    return text[::-1]"),
            Sample(
                "What is a palindrome?",
                "",
                "A palindrome is a word or phrase that reads the same backwards as forwards, such as \"level\".",
            ),
        ),
        Sample(
            "Explain what a palindrome is, then write a Python function that reverses a string and "
            "use it to test whether a word is a palindrome.",
            "",
            "A palindrome reads the same backwards as forwards, for example \"level\" or \"noon\".\n\n"
            "def reverse(text):\n    return text[::-1]\n\n"
            "def is_palindrome(word):\n    word = word.lower()\n    return word == reverse(word)\n\n"
            "is_palindrome(\"Level\") returns True because \"level\" reversed is still \"level\"; "
            "is_palindrome(\"python\") returns False.",
        ),
    ),
    (
        (
            Sample("Give two tips for saving water at home.", "", "1. Take shorter showers. 2. Fix dripping taps."),
            Sample("Why is it important to conserve water?", "", "Fresh water is limited, and treating and pumping it uses energy."),
            Sample(
                "Suggest one way to reuse household water.",
                "",
                "Collect the cold water that runs before the shower warms up and use it for plants.",
            ),
        ),
        Sample(
            "Explain why conserving water matters, then give three practical ways to save or "
            "reuse water at home.",
            "",
            "Why it matters: only a small share of the world's water is fresh and usable, and "
            "cleaning and pumping it costs energy, so every litre saved also saves power.\n"
            "Ways to save and reuse water:\n"
            "1. Take shorter showers.\n"
            "2. Fix dripping taps promptly: one drip per second wastes thousands of litres a year.\n"
            "3. Catch the cold water that runs before the shower warms up and use it to water plants.",
        ),
    ),
    (
        (
            Sample("Convert 5 kilometres to miles.", "", "5 kilometres is about 3.11 miles."),
            Sample("How many metres are in 3.2 kilometres?", "", "There are 3,200 metres in 3.2 kilometres."),
        ),
        Sample(
            "Convert 5 kilometres to miles and 3.2 kilometres to metres, showing each calculation.",
            "",
            "5 km to miles: 1 km is about 0.6214 miles, so 5 x 0.6214 = 3.11 miles.\n"
            "3.2 km to metres: 1 km is 1,000 metres, so 3.2 x 1,000 = 3,200 metres.",
        ),
    ),
    (
        (
            Sample("Write a one-sentence slogan for a bakery.", "", "Fresh from our oven to your table every morning."),
            Sample(
                "Describe the smell of fresh bread in two sentences.",
                "",
                "Fresh bread smells warm and slightly sweet. The toasted crust adds a nutty note.",
            ),
        ),
        Sample(
            "Write a short advertisement for a bakery: a one-sentence slogan followed by two "
            "sentences describing the smell of its fresh bread.",
            "",
            "Slogan: Fresh from our oven to your table every morning.\n"
            "Step inside and you are met by the warm, slightly sweet smell of bread just out of the "
            "oven. Its toasted crust adds a nutty note that makes every loaf hard to resist.",
        ),
    ),
)


def _render_sources(sources: Sequence[Sample]) -> str:
    # JSON keeps multi-line fields unambiguous, and it is the shape the model must answer in. The
    # closing line restates the rule small models break most: serving only one sample.
    body = json.dumps([source.as_dict() for source in sources], ensure_ascii=False, indent=2)
    every = "both" if len(sources) == 2 else f"all {len(sources)}"
    return (
        f"Merge these {len(sources)} samples into one:\n{body}\n"
        f"Write one instruction that asks for {every} tasks, and its complete answer."
    )


def _render_answer(sample: Sample) -> str:
    return json.dumps(sample.as_dict(), ensure_ascii=False)


def build_merge_messages(sources: Sequence[Sample]) -> list[dict[str, str]]:
    if len(sources) < 2:
        raise ValueError(f"a merge needs at least 2 samples, got {len(sources)}")
    messages: list[dict[str, str]] = [{"role": "system", "content": MERGE_SYSTEM_PROMPT}]
    for example_sources, example_merge in _FEW_SHOT:
        messages.append({"role": "user", "content": _render_sources(example_sources)})
        messages.append({"role": "assistant", "content": _render_answer(example_merge)})
    messages.append({"role": "user", "content": _render_sources(sources)})
    return messages


def _json_object(content: str, error: type[InvalidResponseError]) -> dict[str, Any]:
    try:
        value = json.loads(content)
    except json.JSONDecodeError as exc:
        raise error(f"invalid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(value, dict):
        raise error(f"expected a JSON object, got {type(value).__name__}")
    return value


def parse_merged_sample(content: str) -> Sample:
    value = _json_object(content, InvalidMergeError)
    missing = [field for field in FIELDS if field not in value]
    if missing:
        raise InvalidMergeError(f"missing field(s): {', '.join(missing)}")
    for field in FIELDS:
        if not isinstance(value[field], str):
            raise InvalidMergeError(f"field {field!r} is {type(value[field]).__name__}, not a string")
    sample = Sample.normalised(value["instruction"], value["input"], value["output"])
    for field in ("instruction", "output"):
        if not getattr(sample, field):
            raise InvalidMergeError(f"field {field!r} is empty")
    return sample


SCORE_SYSTEM_PROMPT = f"""\
You rate instruction-tuning samples. Judge how clear and useful the instruction is and how \
correct, complete and helpful the output is as its answer. Reply with a JSON object \
{{"score": N}} where N is an integer from {MIN_SCORE} (useless) to {MAX_SCORE} (excellent)."""


def build_score_messages(sample: Sample) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SCORE_SYSTEM_PROMPT},
        {"role": "user", "content": f"Rate this sample:\n{_render_answer(sample)}"},
    ]


def parse_score(content: str) -> int:
    value = _json_object(content, InvalidScoreError)
    score = value.get("score")
    # bool is an int subclass; JSON true is not a score.
    if not isinstance(score, int) or isinstance(score, bool):
        raise InvalidScoreError(f"'score' must be an integer, got {score!r}")
    if not MIN_SCORE <= score <= MAX_SCORE:
        raise InvalidScoreError(f"'score' {score} is outside {MIN_SCORE}..{MAX_SCORE}")
    return score
