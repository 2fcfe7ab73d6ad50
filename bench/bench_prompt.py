"""The merge prompt measured on real pairs: schema-valid rate, kept rate after the merge gate,
rejection reasons, tokens and seconds per merge.

    python bench/bench_prompt.py --model qwen2.5-0.5b --pairs 15              # embedded llama.cpp
    python bench/bench_prompt.py --model smollm2 --max-tokens 512 --repeat-penalty 1.15
    python bench/bench_prompt.py --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct
    python bench/bench_prompt.py --model qwen2.5-0.5b --out answers.jsonl   # every answer, raw

Pairs are the ones the pipeline forms on the bundled sample (ingest, MiniLM, clusters, selection,
similarity pairs at --threshold) in group-id order, so runs with different settings see the same
pairs. Requests go one at a time, uncached, so seconds per merge is the model's time. Each answer
is asked once (the pipeline re-asks an invalid one): the rates are per request.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mergeit_core import settings, stages
from mergeit_core.embed import embed_texts
from mergeit_core.merge.backends import open_backend
from mergeit_core.merge.engine import MergeGroup
from mergeit_core.merge.gate import evaluate_merge
from mergeit_core.merge.llm import ChatBackend, ChatResponse, LLMConfig
from mergeit_core.merge.prompt import (
    MERGED_SAMPLE_SCHEMA,
    PROMPT_VERSION,
    InvalidMergeError,
    build_merge_messages,
    parse_merged_sample,
)
from mergeit_core.merge_stage import load_merge_groups
from mergeit_core.records import Sample


def pipeline_pairs(threshold: float) -> list[MergeGroup]:
    """The merge groups `mergeit run` forms on the bundled sample at this similarity threshold,
    kept in the temp folder per sample content and threshold (forming them embeds 308 rows)."""
    sample = settings.BUNDLED_SAMPLE.read_bytes()
    key = hashlib.sha256(sample + str(threshold).encode()).hexdigest()[:16]
    saved = Path(tempfile.gettempdir()) / f"mergeit-bench-pairs-{key}.json"
    if saved.is_file():
        return [
            MergeGroup(group["group_id"], group["cluster_key"], tuple(Sample(**m) for m in group["members"]))
            for group in json.loads(saved.read_text(encoding="utf-8"))
        ]
    with tempfile.TemporaryDirectory(prefix="bench-prompt-") as workdir:
        db = Path(workdir) / "pairs.duckdb"
        stages.ingest(db, [settings.BUNDLED_SAMPLE])
        stages.embed_missing(db)
        keys = sorted(stages.cluster_topics(db).sizes)
        stages.select_clusters(db, keys)
        stages.pair_clusters(db, keys, threshold=threshold)
        groups = sorted(load_merge_groups(db, keys), key=lambda group: group.group_id)
    saved.write_text(json.dumps([
        {"group_id": g.group_id, "cluster_key": g.cluster_key, "members": [m.as_dict() for m in g.members]}
        for g in groups
    ]), encoding="utf-8")
    return groups


@dataclass
class Trial:
    group: MergeGroup
    response: ChatResponse
    seconds: float
    error: str | None  # the answer did not parse
    kept: bool
    reason: str | None  # why the gate rejected it
    figures: dict


async def ask_all(
    backend: ChatBackend, groups: list[MergeGroup], on_trial: Callable[[Trial], None]
) -> list[Trial]:
    """Ask for each group's merge in turn and judge it as it arrives (an interrupted run keeps
    what it has)."""
    trials = []
    try:
        for group in groups:
            started = time.perf_counter()
            response = await backend.chat(build_merge_messages(group.members), MERGED_SAMPLE_SCHEMA)
            trials.append(judge(group, response, time.perf_counter() - started))
            on_trial(trials[-1])
            print(f"{len(trials)}/{len(groups)} {trials[-1].seconds:.1f}s {response.completion_tokens} tokens "
                  f"{response.finish_reason}: {trials[-1].reason or 'kept'}", file=sys.stderr, flush=True)
    finally:
        await backend.aclose()
    return trials


def judge(group: MergeGroup, response: ChatResponse, seconds: float) -> Trial:
    try:
        merged = parse_merged_sample(response.content)
    except InvalidMergeError as error:
        return Trial(group, response, seconds, str(error), False, "invalid", {})
    verdict = evaluate_merge(group.members, merged, finish_reason=response.finish_reason, embed=embed_texts)
    return Trial(group, response, seconds, None, verdict.kept, verdict.reason, verdict.figures)


def record(trial: Trial, model: str, config: LLMConfig) -> dict:
    try:
        answer: dict | str = parse_merged_sample(trial.response.content).as_dict()
    except InvalidMergeError:
        answer = trial.response.content
    return {
        "group_id": trial.group.group_id,
        "sources": [member.as_dict() for member in trial.group.members],
        "answer": answer,
        "finish_reason": trial.response.finish_reason,
        "model": model,
        "prompt_version": PROMPT_VERSION,
        "sampling_params": config.sampling_params(),
        "completion_tokens": trial.response.completion_tokens,
        "seconds": round(trial.seconds, 2),
        "gate": {"kept": trial.kept, "reason": trial.reason, "figures": trial.figures},
    }


def summary(trials: list[Trial], model: str, config: LLMConfig) -> str:
    n = len(trials)
    model_s = sum(trial.seconds for trial in trials)
    valid = sum(trial.error is None for trial in trials)
    kept = sum(trial.kept for trial in trials)
    reasons = Counter(trial.reason for trial in trials if not trial.kept)
    tokens = sum(trial.response.completion_tokens for trial in trials)
    cut = sum(trial.response.finish_reason == "length" for trial in trials)
    return (
        f"{model} {PROMPT_VERSION} {json.dumps(config.sampling_params(), sort_keys=True)}: {n} pairs, "
        f"schema-valid {valid}/{n} ({valid / n:.0%}), kept by the gate {kept}/{n} ({kept / n:.0%}), "
        f"cut at the token cap {cut}, rejected {dict(reasons.most_common())}, "
        f"{tokens / n:.0f} completion tokens/merge, {model_s / n:.1f} s/merge ({model_s:.0f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="embedded llama.cpp: smollm2, qwen2.5-0.5b or a .gguf; "
                                                   "with --base-url: the served model's name")
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint instead of the embedded server")
    parser.add_argument("--structured-output", choices=("json_schema", "json_object_schema"))
    parser.add_argument("--pairs", type=int, default=15, help="how many pipeline pairs (default 15)")
    parser.add_argument("--threshold", type=float, default=0.55, help="pairing similarity threshold (default 0.55)")
    defaults = LLMConfig()
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--repeat-penalty", type=float, default=defaults.repeat_penalty,
                        help="llama.cpp repetition penalty (embedded server only)")
    parser.add_argument("--out", type=Path, help="write every answer with its sources and verdict as JSONL")
    parser.add_argument("--show", type=int, default=0, help="print this many kept merges beside their sources")
    args = parser.parse_args()

    groups = pipeline_pairs(args.threshold)[: args.pairs]
    config = LLMConfig(
        backend="openai" if args.base_url else "llama_cpp",
        model=args.model,
        base_url=args.base_url,
        api_key_env="OPENAI_API_KEY",
        structured_output=args.structured_output,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        repeat_penalty=args.repeat_penalty,
        # One request at a time on a shared CPU can take minutes: a client timeout would only
        # queue a retry behind the abandoned request, which the server keeps computing.
        request_timeout_s=3600.0,
        total_timeout_s=3600.0,
        max_retries=0,
    )
    with open_backend(config) as backend, (args.out or Path(os.devnull)).open("w", encoding="utf-8") as out:

        def write(trial: Trial) -> None:
            out.write(json.dumps(record(trial, backend.model, config), ensure_ascii=False) + "\n")
            out.flush()

        trials = asyncio.run(ask_all(backend, groups, write))
        model = backend.model
    for trial in [trial for trial in trials if trial.kept][: args.show]:
        print(json.dumps(record(trial, model, config), ensure_ascii=False, indent=1))
    print(summary(trials, model, config))


if __name__ == "__main__":
    main()
