"""The whole pipeline through the `mergeit` command, with ratios measured in this one run.

The LLM is a fast scripted OpenAI-compatible endpoint (tests/llm_support.py), so its own time is
out of the picture and what is left is the pre-LLM pipeline. Every step is a fresh process:

1. raw encode: the same texts through the same model in one tight `encode` call (model loaded
   beforehand, untimed): the embedding limit;
2. first `mergeit run`: its pre-LLM part (goal: <= 1.10x the raw encode) is the run's wall time
   less its two post-LLM steps (merged_samples, merged_dataset), timed by Dagster's step stats;
3. the same command again, nothing changed (goal: <= 0.05x the first run);
4. +1% rows as a second file (goal: <= 0.10x the first run), with the merge groups re-merged
   (LLM requests) against the groups that contain a new row (goal: <= 2x).
Peak RSS of each process comes from the kernel (wait4). Goal 6: <= 2 GiB at 52k synthetic rows.

    python bench/bench_pipeline.py [--rows 4950] [--source ../shared/data/mergeit-6k.json]
    python bench/bench_pipeline.py --synthetic --rows 52002 --skip-raw --pre-llm-only   # scale runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from llm_support import Reply, ScriptedServer, in_order, merge_json  # noqa: E402

from mergeit_core.store import connect  # noqa: E402

# ../shared beside the repository (the main checkout), or beside the worktrees' parent.
DEFAULT_SOURCE = next(
    (p for p in (Path(__file__).resolve().parents[n] / "shared" / "data" / "mergeit-6k.json" for n in (2, 3)) if p.is_file()),
    Path(__file__).resolve().parents[2] / "shared" / "data" / "mergeit-6k.json",
)
KEY_ENV = "MERGEIT_BENCH_KEY"

RAW_ENCODE = """
import json, sys, time
from mergeit_core import embed
from mergeit_core.records import Sample
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
texts = [Sample.normalised(r["instruction"], r.get("input", ""), r.get("output", "")).embedding_text for r in rows]
started = time.perf_counter()
embed.load_model()
loaded = time.perf_counter()
embed.embed_texts(texts)
print(json.dumps({"load_s": loaded - started, "encode_s": time.perf_counter() - loaded}))
"""


STEP_SECONDS = """
import json
import dagster as dg
seconds = {}
with dg.DagsterInstance.get() as instance:
    for run in instance.get_runs():
        for stat in instance.get_run_step_stats(run.run_id):
            seconds[stat.step_key] = seconds.get(stat.step_key, 0.0) + (stat.end_time - stat.start_time)
print(json.dumps(seconds))
"""
POST_LLM_STEPS = ("merged_samples", "merged_dataset")


def run_measured(command: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes) and stdout of ``command``, from wait4's rusage."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command[:4])} failed ({process.returncode}):\n{err.read()[-3000:]}")
        return wall, usage.ru_maxrss * 1024, out.read()


def real_rows(source: Path, count: int, offset: int = 0) -> list[dict]:
    rows = json.loads(source.read_text(encoding="utf-8"))
    if offset + count > len(rows):
        raise SystemExit(f"{source} has {len(rows)} rows; {offset + count} wanted")
    return rows[offset:offset + count]


def synthetic_rows(count: int, seed: int, topics: int = 300) -> list[dict]:
    """Generated instructions with topic structure: each topic draws from its own word list."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(6000)]
    topic_words = [rng.sample(words, 40) for _ in range(topics)]
    rows = []
    for i in range(count):
        own = topic_words[rng.randrange(topics)]
        text = " ".join(rng.choice(own) if rng.random() < 0.7 else rng.choice(words) for _ in range(rng.randint(8, 24)))
        rows.append({"instruction": f"{text.capitalize()} ({i})", "input": "", "output": f"Answer {i}: {text}"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({k: row.get(k, "") for k in ("instruction", "input", "output")}) + "\n")


def gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4950)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--synthetic", action="store_true", help="generated texts instead of the real file")
    parser.add_argument("--skip-raw", action="store_true", help="no raw-encode baseline (scale runs)")
    parser.add_argument("--pre-llm-only", action="store_true",
                        help="similarity threshold 1.0: no merge group forms, so no merge is asked (scale runs)")
    args = parser.parse_args()

    added_count = max(args.rows // 100, 1)
    if args.synthetic:
        rows = synthetic_rows(args.rows + added_count, seed=0)
        base, added = rows[:args.rows], rows[args.rows:]
        origin = f"{args.rows} synthetic rows (generated texts, not real data)"
    else:
        base = real_rows(args.source, args.rows)
        added = real_rows(args.source, added_count, offset=args.rows)
        origin = f"{args.rows} rows of {args.source.name}"
    work = Path(tempfile.mkdtemp(prefix="mergeit-bench-pipeline-"))
    (work / "sources").mkdir()
    write_jsonl(work / "sources" / "base.jsonl", base)
    write_jsonl(work / "base-only.jsonl", base)
    env = {
        **os.environ,
        KEY_ENV: "local",
        "DAGSTER_HOME": str(work / "dagster_home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    (work / "dagster_home").mkdir()
    (work / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    print(f"== {origin}; +1% = {added_count} rows; work dir {work}")
    raw = None
    if not args.skip_raw:
        _, raw_rss, out = run_measured([sys.executable, "-c", RAW_ENCODE, str(work / "base-only.jsonl")], env)
        raw = json.loads(out.strip().splitlines()[-1])
        print(f"raw encode: {raw['encode_s']:.1f} s (model load {raw['load_s']:.1f} s, untimed), peak RSS {gib(raw_rss)}")

    with ScriptedServer(in_order(then=Reply(merge_json()))) as llm:
        # Settings through the environment, which every way of running reads.
        env |= {
            "MERGEIT_SOURCES": str(work / "sources"),
            "MERGEIT_LLM_BACKEND": "openai",
            "MERGEIT_LLM_MODEL": "scripted",
            "MERGEIT_LLM_BASE_URL": llm.base_url,
            "MERGEIT_LLM_API_KEY_ENV": KEY_ENV,
            # The merge gate judges the LLM's answers (post-LLM work, measured by
            # bench_merge_gate.py); the scripted answers are placeholders it would only reject.
            "MERGEIT_MERGE_GATE": "0",
        }
        if args.pre_llm_only:
            env["MERGEIT_THRESHOLD"] = "1.0"  # a pair must exceed cosine 1.0: none does
        command = [
            sys.executable, "-m", "mergeit_assets.cli", "run", "--db", str(work / "mergeit.duckdb"),
            "--log-level", "WARNING",
        ]
        first_s, first_rss, out = run_measured(command, env)
        first_requests = llm.request_count
        print(f"first run: {first_s:.1f} s, peak RSS {gib(first_rss)}, {first_requests} LLM requests")
        print("  " + out.strip().splitlines()[0])
        _, _, steps_out = run_measured([sys.executable, "-c", STEP_SECONDS], env)
        steps = json.loads(steps_out.strip().splitlines()[-1])
        print("  Dagster steps: " + ", ".join(f"{key} {value:.1f} s" for key, value in sorted(steps.items())))
        pre_llm_s = first_s - sum(steps.get(key, 0.0) for key in POST_LLM_STEPS)
        print(f"  pre-LLM part: {pre_llm_s:.1f} s (first run less {' and '.join(POST_LLM_STEPS)})")

        again_s, again_rss, out = run_measured(command, env)
        print(f"unchanged rerun: {again_s:.2f} s, peak RSS {gib(again_rss)}, {llm.request_count - first_requests} LLM requests")
        print("  " + out.strip().splitlines()[0])

        write_jsonl(work / "sources" / "added.jsonl", added)
        before = llm.request_count
        added_s, added_rss, out = run_measured(command, env)
        remerged = llm.request_count - before
        print(f"+1% rows rerun: {added_s:.1f} s, peak RSS {gib(added_rss)}, {remerged} LLM requests")
        print("  " + out.strip().splitlines()[0])

    with connect(work / "mergeit.duckdb") as conn:
        touched = conn.execute(
            "SELECT count(DISTINCT p.group_id) FROM merge_pairs AS p JOIN source_instructions AS s USING (source_id) "
            "WHERE s.source_file LIKE '%added.jsonl'"
        ).fetchall()[0][0]
    print("== ratios (measured in this run)")
    if raw is not None:
        print(f"pre-LLM first run / raw encode: {pre_llm_s / raw['encode_s']:.2f}x (goal <= 1.10); "
              f"whole first run / raw encode: {first_s / raw['encode_s']:.2f}x")
    print(f"unchanged rerun / first run: {again_s / first_s:.3f}x (goal <= 0.05)")
    print(f"+1% rerun / first run: {added_s / first_s:.3f}x (goal <= 0.10)")
    print(f"re-merged groups {remerged} / groups containing a new row {touched}: "
          f"{remerged / max(touched, 1):.2f}x (goal <= 2)")
    print(f"peak RSS of the first run: {gib(first_rss)} (goal at 52k synthetic rows: <= 2 GiB)")


if __name__ == "__main__":
    main()
