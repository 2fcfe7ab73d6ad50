"""Continuous operation under the real daemon: seconds from dropping a file to an up-to-date
merged_dataset, and the runs that took.

Starts `dagster dev` from REPO (default: this checkout; pass another checkout, e.g. the commit
before batched refreshes, to compare) on a fresh instance and an empty folder, with the default
sensor intervals and an in-process scripted OpenAI-compatible LLM that answers at once (so the
figures are the platform's cost, not a model's). Splits SOURCE 99% / 1% (every 100th row is
"new"), drops the 99% file, waits until the dataset is current, drops the 1% file, waits again.
A sensor found STOPPED (an older checkout's default automation sensor) is switched on first, as
a user would in the UI, and reported.

Run: python bench/bench_daemon.py [SOURCE] [--repo PATH]
     (SOURCE: .json or .jsonl; default the bundled 308-row sample)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from daemon_support import (  # noqa: E402
    instance_folder,
    runs_since,
    sensor_states,
    serving_sensors,
    start_sensor,
    wait_until_current,
)
from llm_support import ScriptedServer, concatenated_merge  # noqa: E402
from support import dagster_dev, settled, write_jsonl  # noqa: E402

from mergeit_core.settings import BUNDLED_SAMPLE  # noqa: E402
from mergeit_core.store import connect  # noqa: E402

LATE_RUNS_GRACE_S = 40  # one automation interval (30 s) and then some: runs launched after "current"


def load_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    rows = json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines() if line]
    return [{k: row.get(k, "") for k in ("instruction", "input", "output")} for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", nargs="?", default=str(BUNDLED_SAMPLE))
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for each file")
    args = parser.parse_args()
    rows = load_rows(Path(args.source))
    files = {"base.jsonl": [r for i, r in enumerate(rows) if i % 100 != 99],
             "new.jsonl": [r for i, r in enumerate(rows) if i % 100 == 99]}
    work = Path(tempfile.mkdtemp(prefix="mergeit-daemon-bench-"))
    # `kill PID` stops `dagster dev` and its runs too: SystemExit unwinds through dagster_dev().
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"stopped by SIGTERM; work dir {work}"))
    home, folder, db = instance_folder(work / "dagster_home"), work / "watched", work / "mergeit.duckdb"
    folder.mkdir()
    repo = Path(args.repo).resolve()
    scripted = ScriptedServer(concatenated_merge)  # merges the gate keeps
    print(f"repo {repo}; source {args.source} ({len(rows)} rows); work dir {work}")
    with scripted, dagster_dev(home, {
        "PYTHONPATH": str(repo), "MERGEIT_SOURCES": str(folder), "MERGEIT_DB": str(db),
        "MERGEIT_LLM_BACKEND": "openai", "MERGEIT_LLM_BASE_URL": scripted.base_url, "MERGEIT_LLM_MODEL": "scripted",
        "MERGEIT_LLM_STRUCTURED_OUTPUT": "json_schema", "OPENAI_API_KEY": "sk-local-not-a-secret",
    }, work / "dev.log", cwd=repo, timeout_s=240, ready=serving_sensors) as port, \
            dg.DagsterInstance.from_config(str(home)) as instance:
        for name, status in sensor_states(port).items():
            if status != "RUNNING":
                start_sensor(port, name)
                print(f"switched on {name} (was {status})")
        for name, part in files.items():
            dropped = time.time()
            settled(write_jsonl(folder / name, part))
            seconds = wait_until_current(instance, db, dropped, args.timeout)
            time.sleep(LATE_RUNS_GRACE_S)
            launched = runs_since(instance, dropped)
            with connect(db) as conn:
                final, clusters = conn.execute(
                    "SELECT (SELECT count(*) FROM merged_dataset), (SELECT count(*) FROM clusters)").fetchall()[0]
            stale = [run.tags.get("mergeit/stale_clusters", "") for run in launched.cluster_refresh]
            print(f"{name}: {len(part)} rows -> dataset current after {seconds:.0f} s; runs: {launched.describe()} "
                  f"({len(launched.not_successful)} not successful); {clusters} clusters; {final} final rows"
                  + (f"; refresh run tags: {'; '.join(s.split(':')[0] for s in stale if s)}" if any(stale) else ""))
    print(f"{scripted.request_count} LLM requests in all")


if __name__ == "__main__":
    main()
