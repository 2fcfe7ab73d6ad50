"""The merge gate: a model-free check that an LLM's answer really merges its sources.

Merging must never make the dataset worse than selection alone, so a merge is kept only when the
gate finds evidence that it is one: an instruction that is a task covering every member's task,
an output carrying every member's answer, no copy of one source or of a prompt example, and no
degenerate text (repetition, truncation, placeholders, an answer much shorter than the sources').
Similarities use the same MiniLM as selection (L2-normalised, so a dot product is a cosine).

The thresholds were chosen on the labelled set in bench/merge_eval/ (bench/bench_merge_gate.py
prints the figures and a sweep); each check is one named reason.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from mergeit_core.records import Sample

Embedder = Callable[[Sequence[str]], np.ndarray]

# Reasons, in the order they are checked: the first that applies is stored on the row.
TRUNCATED = "truncated"
PLACEHOLDER = "placeholder"
REPETITION = "repetition"
COPY_OF_EXAMPLE = "copy_of_example"
COPY_OF_SOURCE = "copy_of_source"
ANSWER_AS_INSTRUCTION = "answer_as_instruction"
OUTPUT_TOO_SHORT = "output_too_short"
INCOMPLETE_COVERAGE = "incomplete_coverage"
REASONS = (
    TRUNCATED,
    PLACEHOLDER,
    REPETITION,
    COPY_OF_EXAMPLE,
    COPY_OF_SOURCE,
    ANSWER_AS_INSTRUCTION,
    OUTPUT_TOO_SHORT,
    INCOMPLETE_COVERAGE,
)


@dataclass(frozen=True)
class GateThresholds:
    """Where each check draws its line (see the module docstring for how they were chosen)."""

    # A member is covered when the merged text's relative similarity to it (1: the member itself,
    # 0: no closer than the nearest other member is) reaches min_*_coverage, or when it carries
    # that share of the member's distinctive words.
    min_instruction_coverage: float = 0.05
    min_output_coverage: float = 0.05
    min_lexical_coverage: float = 0.5
    # Cosine similarity of the merged sample to one source / one few-shot example at which it is
    # a copy.
    max_copy_similarity: float = 0.95
    max_example_similarity: float = 0.9
    # Share of repeated word n-grams in a field, or a sentence said twice.
    max_repetition: float = 0.25
    # The merged instruction is an answer when it is closer to the sources' outputs than to their
    # instructions by more than this margin.
    max_answer_margin: float = 0.0
    # Output words over the longest source output's words.
    min_output_ratio: float = 0.5


@dataclass(frozen=True)
class GateVerdict:
    kept: bool
    reason: str | None  # one of REASONS when not kept
    figures: dict[str, float | list[float]] = field(default_factory=dict)


def evaluate_merge(
    sources: Sequence[Sample],
    merged: Sample,
    *,
    finish_reason: str | None = None,
    thresholds: GateThresholds = GateThresholds(),
    embed: Embedder | None = None,
) -> GateVerdict:
    """Keep ``merged`` only with evidence that it merges ``sources``; ``embed`` defaults to the
    packaged MiniLM (mergeit_core.embed.embed_texts)."""
    if len(sources) < 2:
        raise ValueError(f"a merge has at least 2 sources, got {len(sources)}")
    if embed is None:
        from mergeit_core.embed import embed_texts as embed
    figures = _Figures.measure(sources, merged, embed)
    reason = _first_failure(figures, merged, sources, finish_reason, thresholds)
    return GateVerdict(kept=reason is None, reason=reason, figures=figures.as_dict())


@dataclass(frozen=True)
class _Figures:
    instruction_coverage: list[float]  # per member, embedding-relative
    output_coverage: list[float]
    instruction_lexical_coverage: list[float]  # per member, share of its distinctive words
    output_lexical_coverage: list[float]
    copy_similarity: float  # highest similarity of the merged sample to one source
    example_similarity: float  # highest similarity to a few-shot example of the prompt
    repetition: float  # highest share of repeated n-grams in a field; 1.0 for a repeated sentence
    answer_margin: float  # instruction's similarity to the outputs minus to the instructions
    output_ratio: float  # output words / the longest source output's words

    @classmethod
    def measure(cls, sources: Sequence[Sample], merged: Sample, embed: Embedder) -> _Figures:
        examples = _few_shot_texts()
        k = len(sources)
        texts = (
            [_task(s) for s in sources]
            + [s.output for s in sources]
            + [_whole(s) for s in sources]
            + [_task(merged), merged.output, _whole(merged)]
            + examples
        )
        vectors = np.asarray(embed(texts), dtype=np.float32)
        tasks, outputs, wholes = vectors[:k], vectors[k : 2 * k], vectors[2 * k : 3 * k]
        merged_task, merged_output, merged_whole = vectors[3 * k : 3 * k + 3]
        example_vectors = vectors[3 * k + 3 :]
        return cls(
            instruction_coverage=_relative_coverage(merged_task, tasks),
            output_coverage=_relative_coverage(merged_output, outputs),
            instruction_lexical_coverage=_lexical_coverage(_task(merged), [_task(s) for s in sources]),
            output_lexical_coverage=_lexical_coverage(merged.output, [s.output for s in sources]),
            copy_similarity=float(np.max(np.concatenate([wholes @ merged_whole, tasks @ merged_task]))),
            example_similarity=float(np.max(example_vectors @ merged_whole)) if len(example_vectors) else 0.0,
            repetition=max(_repetition(merged.instruction), _repetition(merged.input), _repetition(merged.output)),
            answer_margin=float(np.mean(outputs @ merged_task) - np.mean(tasks @ merged_task)),
            output_ratio=len(_words(merged.output)) / max(max(len(_words(s.output)) for s in sources), 1),
        )

    def as_dict(self) -> dict[str, float | list[float]]:
        return {
            name: ([round(v, 4) for v in value] if isinstance(value, list) else round(value, 4))
            for name, value in asdict(self).items()
        }


def _first_failure(
    f: _Figures, merged: Sample, sources: Sequence[Sample], finish_reason: str | None, t: GateThresholds
) -> str | None:
    if finish_reason == "length":
        return TRUNCATED
    if _placeholders(_whole(merged)) - set().union(*(_placeholders(_whole(s)) for s in sources)):
        return PLACEHOLDER
    if f.repetition > t.max_repetition:
        return REPETITION
    if f.example_similarity >= t.max_example_similarity:
        return COPY_OF_EXAMPLE
    if f.copy_similarity >= t.max_copy_similarity:
        return COPY_OF_SOURCE
    if f.answer_margin > t.max_answer_margin:
        return ANSWER_AS_INSTRUCTION
    if f.output_ratio < t.min_output_ratio:
        return OUTPUT_TOO_SHORT
    for sem, lex, limit in (
        (f.instruction_coverage, f.instruction_lexical_coverage, t.min_instruction_coverage),
        (f.output_coverage, f.output_lexical_coverage, t.min_output_coverage),
    ):
        if any(s < limit and l < t.min_lexical_coverage for s, l in zip(sem, lex)):
            return INCOMPLETE_COVERAGE
    return None


def _task(sample: Sample) -> str:
    return sample.embedding_text


def _whole(sample: Sample) -> str:
    return "\n".join(part for part in (sample.instruction, sample.input, sample.output) if part)


def _few_shot_texts() -> list[str]:
    from mergeit_core.merge.prompt import _FEW_SHOT

    samples = [s for example_sources, example_merge in _FEW_SHOT for s in (*example_sources, example_merge)]
    return [_whole(s) for s in samples]


def _relative_coverage(merged: np.ndarray, members: np.ndarray) -> list[float]:
    """Per member i: (sim(merged, i) - max_j sim(j, i)) / (1 - max_j sim(j, i)), j the other
    members: 1 when the merged text is member i, 0 when it is no closer to i than another member
    is, below 0 when it is further."""
    to_merged = members @ merged
    between = members @ members.T
    np.fill_diagonal(between, -1.0)
    nearest_other = between.max(axis=1)
    return [float(v) for v in (to_merged - nearest_other) / np.maximum(1.0 - nearest_other, 0.05)]


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STOPWORDS = frozenset(
    "a an the and or but if then of to in on at by for with from as is are was were be been being "
    "it its this that these those there their they them he she his her we our you your i me my "
    "do does did not no so such than too very can could will would should may might must shall "
    "what which who whom whose when where why how all any each both few more most other some "
    "into about over under up down out off again further once here also just only own same "
    "given following".split()
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _stem(word: str) -> str:
    # Crude but enough to match "conserve"/"conserving" and "tip"/"tips" across paraphrases.
    return word.rstrip("s")[:6]


def _content_stems(text: str) -> set[str]:
    return {_stem(w) for w in _words(text) if w not in _STOPWORDS and len(w) > 1}


def _lexical_coverage(merged: str, members: Sequence[str]) -> list[float]:
    """Per member: the share of its distinctive content words (in no other member) that the
    merged text carries; 1.0 when it has none."""
    merged_stems = _content_stems(merged)
    stems = [_content_stems(m) for m in members]
    shares = []
    for i, own in enumerate(stems):
        distinctive = own - set().union(*(s for j, s in enumerate(stems) if j != i))
        shares.append(len(distinctive & merged_stems) / len(distinctive) if distinctive else 1.0)
    return shares


_SENTENCE = re.compile(r"[^.!?\n]+")
_NGRAM = 4


def _repetition(text: str) -> float:
    """1.0 when a sentence of 4+ words is said twice, else the share of word 4-grams that repeat
    an earlier one."""
    sentences = [" ".join(_words(s)) for s in _SENTENCE.findall(text)]
    long_sentences = [s for s in sentences if len(s.split()) >= 4]
    if len(long_sentences) != len(set(long_sentences)):
        return 1.0
    words = _words(text)
    grams = [tuple(words[i : i + _NGRAM]) for i in range(len(words) - _NGRAM + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(n - 1 for n in counts.values()) / len(grams)


_PLACEHOLDER = re.compile(
    r"\[(?:insert|your|add|enter|name|placeholder|todo|tbd)[^\]]*\]"
    r"|<(?:insert|your|add|enter|placeholder)[^>]*>"
    r"|\{\{?[a-z_ ]+\}?\}"
    r"|\blorem ipsum\b|\bTODO\b|\bTBD\b|\bXXX+\b|\[\.\.\.\]|\(\.\.\.\)",
    re.IGNORECASE,
)


def _placeholders(text: str) -> set[str]:
    return {m.group(0).lower() for m in _PLACEHOLDER.finditer(text)}
