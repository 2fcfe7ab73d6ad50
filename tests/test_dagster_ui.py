"""`dagster dev` from the repository root serves the assets, their partitions and the sensors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
QUERY = """{
  assetNodes { assetKey { path } isPartitioned partitionDefinition { dimensionTypes { dynamicPartitionsDefinitionName } } }
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def restore_default_signals() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)


def stop_everything_under(process: subprocess.Popen, home: Path) -> None:
    """dagster dev spawns a code server, webserver, daemon and log watchers: stop the group, then
    anything still naming this instance's folder."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=15)
            break
        except subprocess.TimeoutExpired:
            continue
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        pid, _, args = line.strip().partition(" ")
        if str(home) in args:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_dagster_dev_serves_the_asset_graph(tmp_path: Path, dagster_home: Path) -> None:
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "MERGEIT_DB": str(tmp_path / "ui.duckdb"),
           "MERGEIT_SOURCES": str(tmp_path / "empty")}
    (tmp_path / "empty").mkdir()
    log = (tmp_path / "dev.log").open("w")
    process = subprocess.Popen(
        ["dagster", "dev", "-h", "127.0.0.1", "-p", str(port)], cwd=REPO_ROOT, env=env,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=restore_default_signals,
    )
    try:
        deadline, answer = time.monotonic() + 180, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = graphql(port, QUERY)
                if answer.get("data", {}).get("assetNodes"):
                    break
            except OSError:
                pass
            time.sleep(2)
        assert answer and answer.get("data"), (tmp_path / "dev.log").read_text()[-3000:]
        nodes = {"/".join(n["assetKey"]["path"]): n for n in answer["data"]["assetNodes"]}
        assert set(nodes) == {
            "source_instructions", "instruction_embeddings", "topic_clusters",
            "selected_subset", "merge_pairs", "merged_samples", "merged_dataset",
        }
        for name in ("selected_subset", "merge_pairs", "merged_samples"):
            assert nodes[name]["isPartitioned"]
            dims = nodes[name]["partitionDefinition"]["dimensionTypes"]
            assert [d["dynamicPartitionsDefinitionName"] for d in dims] == ["clusters"]
        assert not nodes["merged_dataset"]["isPartitioned"]
    finally:
        stop_everything_under(process, dagster_home)
        log.close()
    # Bound to 127.0.0.1 only, and gone after the stop.
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
