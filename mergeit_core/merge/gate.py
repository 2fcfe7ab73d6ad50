"""The merge gate: a model-free check that an LLM's answer really merges its sources.

Merging must never make the dataset worse than selection alone, so a merge is kept only when the
gate finds evidence that it is one: an instruction that is a task covering every member's task,
an output carrying every member's answer, no copy of one source or of a prompt example, and no
degenerate text (repetition, truncation, placeholders, an answer much shorter than the sources').
Similarities use the same MiniLM as selection (L2-normalised, so a dot product is a cosine).

The thresholds were chosen on the labelled set in bench/merge_eval/ (169 cases, 77 of them real
answers of SmolLM2-135M and Qwen2.5-Coder-0.5B) with bench/bench_merge_gate.py's sweep and grids:
each inside a plateau where the precision of what is kept stays >= 0.98 and the most genuine
merges pass (measured: precision 1.000, recall 0.911). Each check is one named reason.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache

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
    # enough of the member's distinctive words (min_lexical_coverage for the instruction,
    # min_output_lexical_coverage for the output). The output's bar is low: correct answers that
    # paraphrase or fix a source's answer score low on both, so only an output that is no closer
    # to a member's answer than the other's AND carries almost none of its words is rejected.
    min_instruction_coverage: float = 0.2
    min_output_coverage: float = 0.15
    min_lexical_coverage: float = 0.3
    min_output_lexical_coverage: float = 0.05
    # Cosine similarity of the merged sample to one source / one few-shot example at which it is
    # a copy.
    max_copy_similarity: float = 0.95
    max_example_similarity: float = 0.9
    # Word overlap (Jaccard) of the merged output with one source's output at which the output
    # answers that source only, when it also carries under min_lexical_coverage of another
    # member's distinctive output words: small models restate both tasks over one answer.
    max_output_copy_similarity: float = 0.9
    # Share of each source input's content words the merged instruction + input must carry: a
    # merge that asks about "the given text" and drops the text merges nothing.
    min_input_coverage: float = 0.5
    # Share of repeated word n-grams in a field, or a sentence said twice.
    max_repetition: float = 0.25
    # The merged instruction is an answer when it is closer to the sources' outputs than to their
    # instructions by more than this margin.
    max_answer_margin: float = 0.0
    # Output words over the longest source output's words.
    min_output_ratio: float = 0.6


@dataclass(frozen=True)
class GateVerdict:
    kept: bool
    reason: str | None  # one of REASONS when not kept
    figures: dict[str, float | list[float]] = field(default_factory=dict)


# Bump when a figure's definition (or the embedding model) changes: figures stored under another
# version are measured again.
FIGURES_VERSION = "gate-figures-v2"
Figures = dict[str, float | list[float]]


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
    figures = measure_merge(sources, merged, embed=embed)
    return judge_merge(sources, merged, figures, finish_reason=finish_reason, thresholds=thresholds)


def measure_merge(sources: Sequence[Sample], merged: Sample, *, embed: Embedder | None = None) -> Figures:
    """The figures the gate judges by: the costly half (MiniLM), the same for every threshold, so
    they can be stored with the answer and judged again under other thresholds for free."""
    if len(sources) < 2:
        raise ValueError(f"a merge has at least 2 sources, got {len(sources)}")
    if embed is None:
        from mergeit_core.embed import embed_texts as embed
    return asdict(_Figures.measure(sources, merged, embed))


def judge_merge(
    sources: Sequence[Sample],
    merged: Sample,
    figures: Figures,
    *,
    finish_reason: str | None = None,
    thresholds: GateThresholds = GateThresholds(),
) -> GateVerdict:
    """The verdict on figures from measure_merge: cheap arithmetic and a few regular expressions."""
    measured = _Figures(**figures)
    reason = _first_failure(measured, merged, sources, finish_reason, thresholds)
    return GateVerdict(kept=reason is None, reason=reason, figures=measured.as_dict())


@dataclass(frozen=True)
class _Figures:
    instruction_coverage: list[float]  # per member, embedding-relative
    output_coverage: list[float]
    instruction_lexical_coverage: list[float]  # per member, share of its distinctive words
    output_lexical_coverage: list[float]
    input_coverage: list[float]  # per member, share of its input's content words; 1.0 without input
    copy_similarity: float  # highest similarity to one source: of the whole samples, or of the
    # instructions' words (1.0: a source's instruction repeated word for word)
    output_copy_similarity: float  # highest word overlap of the output with one source's output
    example_similarity: float  # highest similarity to a few-shot example of the prompt
    repetition: float  # highest share of repeated n-grams in a field; 1.0 for a repeated sentence
    answer_margin: float  # instruction's similarity to the outputs minus to the instructions
    instruction_is_task: float  # 1.0 when the instruction asks (a question or an imperative), else 0.0
    output_ratio: float  # output words / the longest source output's words

    @classmethod
    def measure(cls, sources: Sequence[Sample], merged: Sample, embed: Embedder) -> _Figures:
        k = len(sources)
        texts = (
            [_task(s) for s in sources]
            + [s.output for s in sources]
            + [_whole(s) for s in sources]
            + [_task(merged), merged.output, _whole(merged)]
        )
        vectors = np.asarray(embed(texts), dtype=np.float32)
        tasks, outputs, wholes = vectors[:k], vectors[k : 2 * k], vectors[2 * k : 3 * k]
        merged_task, merged_output, merged_whole = vectors[3 * k :]
        example_vectors = _few_shot_vectors(embed)
        return cls(
            instruction_coverage=_relative_coverage(merged_task, tasks),
            output_coverage=_relative_coverage(merged_output, outputs),
            instruction_lexical_coverage=_lexical_coverage(_task(merged), [_task(s) for s in sources]),
            output_lexical_coverage=_lexical_coverage(merged.output, [s.output for s in sources]),
            input_coverage=[_input_coverage(_task(merged), s.input) for s in sources],
            copy_similarity=max(
                float(np.max(wholes @ merged_whole)),
                *(_word_overlap(merged.instruction, s.instruction) for s in sources),
            ),
            output_copy_similarity=max(_word_overlap(merged.output, s.output) for s in sources),
            example_similarity=float(np.max(example_vectors @ merged_whole)) if len(example_vectors) else 0.0,
            repetition=max(_repetition(merged.instruction), _repetition(merged.input), _repetition(merged.output)),
            answer_margin=float(np.mean(outputs @ merged_task) - np.mean(tasks @ merged_task)),
            instruction_is_task=float(is_task(merged.instruction)),
            output_ratio=len(_words(merged.output)) / max(max(len(_words(s.output)) for s in sources), 1),
        )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

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
    asked = all(is_task(s.instruction) for s in sources)
    if f.answer_margin > t.max_answer_margin or (asked and not f.instruction_is_task):
        return ANSWER_AS_INSTRUCTION
    if f.output_ratio < t.min_output_ratio:
        return OUTPUT_TOO_SHORT
    # One source's output pasted while another member's answer is missing (a short answer
    # appended to a long one also overlaps the long one almost entirely, and is a merge).
    one_answer = f.output_copy_similarity >= t.max_output_copy_similarity and min(f.output_lexical_coverage) < t.min_lexical_coverage
    if one_answer or min(f.input_coverage) < t.min_input_coverage:
        return INCOMPLETE_COVERAGE
    for sem, lex, limit, lexical_limit in (
        (f.instruction_coverage, f.instruction_lexical_coverage, t.min_instruction_coverage, t.min_lexical_coverage),
        (f.output_coverage, f.output_lexical_coverage, t.min_output_coverage, t.min_output_lexical_coverage),
    ):
        if any(s < limit and l < lexical_limit for s, l in zip(sem, lex)):
            return INCOMPLETE_COVERAGE
    return None


def _task(sample: Sample) -> str:
    return sample.embedding_text


def _whole(sample: Sample) -> str:
    return "\n".join(part for part in (sample.instruction, sample.input, sample.output) if part)


@lru_cache(maxsize=4)
def _few_shot_vectors(embed: Embedder) -> np.ndarray:
    """Every sample of the prompt's worked examples, sources and merges: a model that copies
    one answers with the example instead of merging its own group."""
    from mergeit_core.merge.prompt import _FEW_SHOT

    samples = [s for example_sources, example_merge in _FEW_SHOT for s in (*example_sources, example_merge)]
    return np.asarray(embed([_whole(s) for s in samples]), dtype=np.float32)


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
    # Task verbs frame a task ("create", "generate") rather than say what it is about.
    return {_stem(w) for w in _words(text) if w not in _STOPWORDS and w not in _TASK_VERBS and len(w) > 1}


def _input_coverage(merged_task: str, source_input: str) -> float:
    """The share of a source input's content words (numbers included) that the merged task
    carries; 1.0 for a source without input."""
    stems = {_stem(w) for w in _words(source_input) if w not in _STOPWORDS}
    return len(stems & {_stem(w) for w in _words(merged_task)}) / len(stems) if stems else 1.0


def _word_overlap(a: str, b: str) -> float:
    """Jaccard similarity of the two texts' word sets."""
    words_a, words_b = set(_words(a)), set(_words(b))
    return len(words_a & words_b) / len(words_a | words_b) if words_a | words_b else 1.0


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


# First words of a task: the imperative verbs, question words and addressees ("You are given",
# "I need") that open the instructions of MergeIT-6k (all of its 323 distinct first words but
# articles, nouns and misspellings), plus a few common verbs it happens to lack.
_TASK_VERBS = frozenset(
    "access add adapt aggregate align alter analyse analyze annotate answer apply arrange ask "
    "assemble assess assign assist assume authenticate book brainstorm break build buy calculate "
    "categorise categorize change characterize check choose circle cite clarify classify clean "
    "collect combine come compare compile complete compose compute conceptualize conclude connect "
    "construct consult contrast convert correct count craft create critique crop debate debug "
    "decide deduce deduct deduplicate define delete demonstrate derive describe design detail "
    "detect determine develop devise diagnose differentiate discuss distinguish divide document "
    "draft draw edit elaborate elucidate encode enter enumerate estimate evaluate examine expand "
    "explain explore express extend extract feed figure fill filter find finish fix follow form "
    "format formulate gather generate get give grade greet guess guide help highlight hypothesize "
    "identify illustrate imagine implement improve indicate infer input insert interpret introduce "
    "invent investigate join justify label learn let link list localize locate look mail make "
    "match mention merge modify multiply name narrate normalize note offer omit order organise "
    "organize outline output paraphrase parse partition pen perform pick place plan pose predict "
    "prepare present pretend process produce propose prove provide put rank rate read rearrange "
    "recategorize recite recommend recount recreate redact reduce refactor refer reformat reframe "
    "relabel remind remove rename render reorder reorganize rephrase replace reply report research "
    "reshape resolve respond restate restore retrieve return reverse review revise rewrite reword "
    "rotate save say scan score search select send set share show simplify sketch solve sort "
    "speak specify spell split standardize state suggest summarise summarize supply suppose "
    "suppress swap synthesize take tell think trace train transcribe transform translate "
    "troubleshoot try tune turn update upload use utilize verify visit vote work wrap write"
    " what how which who whom whose why where when can could is are does do did should would will "
    "shall may you your i we let's believe personalize regulate level".split()
)
# Words that may come before the verb of a task ("Please briefly explain", "Then, list").
_TASK_PREFIXES = frozenset(
    "please now then first firstly second secondly finally also next and kindly re de auto".split()
)
# A leading phrase that a comma closes before the task verb ("Given the text, summarize it").
_LEADING_PHRASE = frozenset(
    "given using based in for with from as if when once after before by on at to considering "
    "assuming according without utilizing following depending".split()
)
_CLAUSE = re.compile(r"[^.!?;:\n]+[.!?;:]?")


def is_task(instruction: str) -> bool:
    """True when the text asks for something: a question, or a sentence whose first word (after
    "please", an adverb in -ly, or a leading phrase closed by a comma) is an imperative verb or a
    question word. An answer written into the instruction field ("Businesses can use AI to ...")
    is a statement."""
    if "?" in instruction:
        return True
    for clause in _CLAUSE.findall(instruction):
        words = _words(clause)
        if words and words[0] in _LEADING_PHRASE and "," in clause:
            words = _words(clause.split(",", 1)[1])
        while words and (words[0] in _TASK_PREFIXES or (words[0].endswith("ly") and words[0] not in _TASK_VERBS)):
            words = words[1:]
        if words and words[0] in _TASK_VERBS:
            return True
    return False


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


# Template slots a model leaves unfilled: "[Insert a tip here]", "[Your Name]", "[Question 1]",
# "<insert name>", "lorem ipsum", "[...]". Not "{name}": code uses braces.
_PLACEHOLDER = re.compile(
    r"(?i:\[(?:insert|your|add|enter|name|placeholder|todo|tbd)[^\]]*\])"
    r"|\[[A-Z][a-z]+(?: [A-Za-z]+)*(?: \d+)?\](?!\()"
    r"|<(?:insert|your|add|enter|placeholder)[^>]*>"
    r"|\blorem ipsum\b|\bTODO\b|\bTBD\b|\bXXX+\b|\[\.\.\.\]|\(\.\.\.\)",
)


def _placeholders(text: str) -> set[str]:
    return {m.group(0).lower() for m in _PLACEHOLDER.finditer(text)}


# The figures each verdict carries (merged_samples stores them as gate_<name> columns); the
# coverages are lists, one value per member in prompt order.
FIGURES = _Figures.names()
LIST_FIGURES = frozenset(name for name in FIGURES if name.endswith("coverage"))
