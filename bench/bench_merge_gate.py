"""The merge gate on the labelled set in bench/merge_eval/: precision of what it keeps, recall of
genuine merges, per kind, and a one-threshold-at-a-time sweep around the defaults.

    python bench/bench_merge_gate.py [--cases bench/merge_eval/cases.jsonl] [--misses] [--no-sweep]

Precision of kept = genuine kept / all kept (goal >= 0.98); recall = genuine kept / genuine
(goal >= 0.90). For each degenerate kind it prints how many were rejected and how many with the
reason the label names. Embeddings are computed once per text (the real MiniLM), so the sweep
costs only the gate's arithmetic.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from mergeit_core.embed import embed_texts
from mergeit_core.merge.gate import GateThresholds, GateVerdict, evaluate_merge
from mergeit_core.records import Sample

CASES = Path(__file__).resolve().parent / "merge_eval" / "cases.jsonl"
GENUINE = "genuine"

# Values tried for each threshold, the others staying at their defaults.
SWEEP: dict[str, Sequence[float]] = {
    "min_instruction_coverage": (-0.2, -0.1, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3),
    "min_output_coverage": (-1.0, -0.2, -0.1, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3),
    "min_lexical_coverage": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 1.01),
    "min_output_lexical_coverage": (0.0, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3),
    "max_copy_similarity": (0.85, 0.9, 0.93, 0.95, 0.97, 0.99, 1.01),
    "max_output_copy_similarity": (0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.01),
    "min_input_coverage": (0.0, 0.3, 0.4, 0.5, 0.6, 0.7),
    "max_example_similarity": (0.7, 0.8, 0.85, 0.9, 0.95, 1.01),
    "max_repetition": (0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 1.01),
    "max_answer_margin": (-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 1.0),
    "min_output_ratio": (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8),
}


@dataclass(frozen=True)
class Case:
    case_id: str
    sources: tuple[Sample, ...]
    merged: Sample
    finish_reason: str | None
    label: str  # "genuine" or the gate reason the case exemplifies
    author: str

    @classmethod
    def of(cls, row: dict) -> Case:
        return cls(
            case_id=row["id"],
            sources=tuple(Sample.normalised(**s) for s in row["sources"]),
            merged=Sample.normalised(**row["merge"]),
            finish_reason=row.get("finish_reason"),
            label=row["label"],
            author=row["author"],
        )


def load_cases(path: Path) -> list[Case]:
    with path.open(encoding="utf-8") as lines:
        return [Case.of(json.loads(line)) for line in lines if line.strip()]


class MemoEmbedder:
    """embed_texts, each distinct text once, remembered in ``store`` (a .npz file) across runs."""

    def __init__(self, store: Path | None) -> None:
        self._store = store
        self._known: dict[str, np.ndarray] = {}
        if store is not None and store.exists():
            saved = np.load(store, allow_pickle=False)
            self._known = dict(zip(saved["texts"].tolist(), saved["vectors"]))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._known]
        if missing:
            self._known.update(zip(missing, embed_texts(missing)))
        return np.stack([self._known[t] for t in texts])

    def save(self) -> None:
        if self._store is not None:
            texts = list(self._known)
            np.savez(self._store, texts=np.array(texts), vectors=np.stack([self._known[t] for t in texts]))


@dataclass(frozen=True)
class Score:
    kept: int
    genuine_kept: int
    genuine: int

    @property
    def precision(self) -> float:
        return self.genuine_kept / self.kept if self.kept else 1.0

    @property
    def recall(self) -> float:
        return self.genuine_kept / self.genuine if self.genuine else 1.0


def judge(cases: Sequence[Case], thresholds: GateThresholds, embed: MemoEmbedder) -> list[GateVerdict]:
    return [
        evaluate_merge(c.sources, c.merged, finish_reason=c.finish_reason, thresholds=thresholds, embed=embed)
        for c in cases
    ]


def score(cases: Sequence[Case], verdicts: Sequence[GateVerdict]) -> Score:
    return Score(
        kept=sum(v.kept for v in verdicts),
        genuine_kept=sum(v.kept and c.label == GENUINE for c, v in zip(cases, verdicts)),
        genuine=sum(c.label == GENUINE for c in cases),
    )


def report(cases: Sequence[Case], verdicts: Sequence[GateVerdict], show_misses: bool) -> None:
    s = score(cases, verdicts)
    print(f"{len(cases)} cases: {s.genuine} genuine, {len(cases) - s.genuine} degenerate; "
          f"authors {dict(Counter(c.author for c in cases))}")
    print(f"kept {s.kept}: precision of kept {s.precision:.3f} (goal >= 0.98), "
          f"genuine kept {s.genuine_kept}/{s.genuine} = recall {s.recall:.3f} (goal >= 0.90)")
    for author in sorted({c.author for c in cases}):
        mine = [(c, v) for c, v in zip(cases, verdicts) if c.author == author]
        a = score([c for c, _ in mine], [v for _, v in mine])
        print(f"  {author:<20} {len(mine):>3} cases: kept {a.kept}, precision {a.precision:.3f}, "
              f"genuine kept {a.genuine_kept}/{a.genuine}")
    by_kind: dict[str, list[tuple[Case, GateVerdict]]] = defaultdict(list)
    for case, verdict in zip(cases, verdicts):
        by_kind[case.label].append((case, verdict))
    print(f"{'kind':<24}{'cases':>6}{'kept':>6}{'rejected':>9}{'same reason':>12}  reasons given")
    for kind in sorted(by_kind, key=lambda k: (k != GENUINE, k)):
        pairs = by_kind[kind]
        kept = sum(v.kept for _, v in pairs)
        same = sum(v.reason == kind for _, v in pairs)
        reasons = dict(Counter(v.reason for _, v in pairs if not v.kept))
        print(f"{kind:<24}{len(pairs):>6}{kept:>6}{len(pairs) - kept:>9}"
              f"{'' if kind == GENUINE else same:>12}  {reasons}")
    if show_misses:
        print("\nmisjudged (genuine rejected, degenerate kept):")
        for case, verdict in zip(cases, verdicts):
            if verdict.kept != (case.label == GENUINE):
                print(f"  {case.case_id} [{case.label}, {case.author}] -> {verdict.reason or 'kept'} {verdict.figures}")


def sweep(cases: Sequence[Case], embed: MemoEmbedder) -> None:
    print("\nsweep, one threshold at a time (others at their defaults): precision / recall / kept")
    defaults = GateThresholds()
    for name in (f.name for f in fields(GateThresholds)):
        cells = []
        for value in SWEEP[name]:
            s = score(cases, judge(cases, replace(defaults, **{name: value}), embed))
            mark = "*" if value == getattr(defaults, name) else " "
            cells.append(f"{value:g}{mark}{s.precision:.2f}/{s.recall:.2f}/{s.kept}")
        print(f"  {name:<26}" + "  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, default=CASES)
    parser.add_argument("--misses", action="store_true", help="list every misjudged case with its figures")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--embeddings", type=Path, help="a .npz file that keeps the MiniLM vectors between runs")
    parser.add_argument("--figures", type=Path, help="write each case's label, verdict and figures here (JSONL)")
    args = parser.parse_args()
    cases = load_cases(args.cases)
    embed = MemoEmbedder(args.embeddings)
    verdicts = judge(cases, GateThresholds(), embed)
    embed.save()
    if args.figures:
        with args.figures.open("w", encoding="utf-8") as out:
            for case, verdict in zip(cases, verdicts):
                row = {"id": case.case_id, "label": case.label, "reason": verdict.reason, **verdict.figures}
                out.write(json.dumps(row) + "\n")
    report(cases, verdicts, args.misses)
    if not args.no_sweep:
        sweep(cases, embed)


if __name__ == "__main__":
    main()
