"""How the pairs and the model answers of the merge-gate evaluation set were collected.

    python bench/merge_eval/collect.py pairs [--mergeit-6k ../shared/data/mergeit-6k.json]
                                                             # -> bench/merge_eval/pairs.jsonl
    python bench/merge_eval/collect.py answers --model smollm2 [--gguf PATH] [--max-tokens 768]
                                                             # -> bench/merge_eval/answers_<model>.jsonl

Pairs are real: rows of the bundled sample and of MergeIT-6k (rows outside the sample), each row
paired greedily with its most similar unpaired row when their MiniLM cosine similarity exceeds the
pipeline's default threshold, as merge_pairs does within a cluster. Answers come from llama.cpp
(llama-cpp-python in process, the chat handler its server uses) with today's merge prompt and
the JSON-object schema form the embedded server uses, one request per pair, with llama.cpp's
finish_reason. Labels are given by reading each answer beside its sources (cases.jsonl; see
README.md), never by the gate.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from mergeit_core.embed import embed_texts
from mergeit_core.merge.llama_server import default_gguf_path
from mergeit_core.merge.prompt import MERGED_SAMPLE_SCHEMA, PROMPT_VERSION, build_merge_messages
from mergeit_core.records import Sample
from mergeit_core.settings import BUNDLED_SAMPLE

HERE = Path(__file__).resolve().parent
MERGEIT_6K = HERE.parents[2] / "shared" / "data" / "mergeit-6k.json"
PAIRS = HERE / "pairs.jsonl"
THRESHOLD = 0.55  # the pipeline's default similarity_threshold


def greedy_pairs(samples: list[Sample], threshold: float) -> list[tuple[int, int, float]]:
    vectors = embed_texts([s.embedding_text for s in samples])
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -1.0)
    order = np.dstack(np.unravel_index(np.argsort(-similarity, axis=None), similarity.shape))[0]
    taken: set[int] = set()
    pairs = []
    for i, j in order:
        if similarity[i, j] <= threshold:
            break
        if i < j and i not in taken and j not in taken:
            taken |= {int(i), int(j)}
            pairs.append((int(i), int(j), float(similarity[i, j])))
    return pairs


def collect_pairs(mergeit_6k: Path, six_k_rows: int, seed: int) -> None:
    bundled = [Sample.normalised(**json.loads(line)) for line in BUNDLED_SAMPLE.read_text("utf-8").splitlines()]
    rows = json.loads(mergeit_6k.read_text("utf-8"))
    in_sample = {s.source_id for s in bundled}
    others = [Sample.normalised(r["instruction"], r["input"], r["output"]) for r in rows]
    others = [s for s in others if s.source_id not in in_sample]
    random.Random(seed).shuffle(others)
    with PAIRS.open("w", encoding="utf-8") as out:
        for origin, samples in (("sample", bundled), ("mergeit-6k", others[:six_k_rows])):
            for n, (i, j, similarity) in enumerate(greedy_pairs(samples, THRESHOLD)):
                record = {
                    "pair": f"{origin}-{n:03d}",
                    "origin": origin,
                    "similarity": round(similarity, 4),
                    "sources": [samples[i].as_dict(), samples[j].as_dict()],
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {sum(1 for _ in PAIRS.open())} pairs to {PAIRS}")


def load_llama(gguf: Path, threads: int):
    import llama_cpp
    from llama_cpp import Llama

    # llama-cpp-python 0.3.36 as built here crashes (SIGSEGV) decoding more than one token at a
    # time through the CPU's repacked "extra buffer types" (AMX); without them it runs. The
    # server has no flag for this, hence llama.cpp in process.
    defaults = llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama.llama_cpp.llama_model_default_params = without_extra_buffers
    return Llama(str(gguf), n_ctx=4096, n_threads=threads, verbose=False)


def collect_answers(model: str, gguf: Path, max_tokens: int, temperature: float, threads: int) -> None:
    out_path = HERE / f"answers_{model}.jsonl"
    # Appends: a rerun asks only for the pairs not answered yet.
    done = {json.loads(line)["pair"] for line in out_path.open(encoding="utf-8")} if out_path.exists() else set()
    pairs = [p for p in map(json.loads, PAIRS.open(encoding="utf-8")) if p["pair"] not in done]
    llama = load_llama(gguf, threads)
    with out_path.open("a", encoding="utf-8") as out:
        for pair in pairs:
            sources = [Sample(**s) for s in pair["sources"]]
            response = llama.create_chat_completion(
                messages=build_merge_messages(sources),
                # The form the embedded server is sent and constrains by (see DESIGN.md).
                response_format={"type": "json_object", "schema": MERGED_SAMPLE_SCHEMA},
                max_tokens=max_tokens,
                temperature=temperature,
            )
            choice = response["choices"][0]
            record = {
                "pair": pair["pair"],
                "model": model,
                "prompt_version": PROMPT_VERSION,
                "max_tokens": max_tokens,
                "finish_reason": choice["finish_reason"],
                "content": choice["message"]["content"],
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            print(pair["pair"], record["finish_reason"], (record["content"] or "")[:100].replace("\n", " "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    pairs = sub.add_parser("pairs")
    pairs.add_argument("--six-k-rows", type=int, default=400, help="MergeIT-6k rows (outside the sample) to pair")
    pairs.add_argument("--seed", type=int, default=9)
    pairs.add_argument("--mergeit-6k", type=Path, default=MERGEIT_6K, help=f"default {MERGEIT_6K}")
    answers = sub.add_parser("answers")
    answers.add_argument("--model", default="smollm2", help="a name for the answers file")
    answers.add_argument("--gguf", type=Path, help="GGUF file (default: the bundled SmolLM2)")
    answers.add_argument("--max-tokens", type=int, default=768)
    answers.add_argument("--temperature", type=float, default=0.25)
    answers.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.step == "pairs":
        collect_pairs(args.mergeit_6k, args.six_k_rows, args.seed)
    else:
        collect_answers(args.model, args.gguf or default_gguf_path(), args.max_tokens, args.temperature, args.threads)


if __name__ == "__main__":
    main()
