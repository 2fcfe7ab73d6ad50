"""Helpers shared by the tests: real rows from the bundled sample, written as source files, and
`dagster dev` started and surely stopped."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from mergeit_core.merge.llama_server import LlamaCppServer
from mergeit_core.settings import BUNDLED_SAMPLE


def bundled_rows() -> list[dict]:
    return [json.loads(line) for line in BUNDLED_SAMPLE.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def settled(path: Path, age_s: float = 120) -> Path:
    """Give a finished file an mtime in the past, as a file written a while ago has."""
    past = time.time() - age_s
    os.utime(path, (past, past))
    return path


def served_requests(server: LlamaCppServer) -> int:
    """Chat requests the llama.cpp server has answered, read from its own access log."""
    return server.log_tail(max_chars=10**9).count("POST /v1/chat/completions")


def run_mergeit(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """The installed `mergeit` command, as a user runs it, in a session of its own."""
    command = shutil.which("mergeit")
    assert command, "the `mergeit` command is not installed (pip install -e .)"
    return subprocess.run(
        [command, *args], cwd=cwd, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=timeout, start_new_session=True,
    )


REPO_ROOT = Path(__file__).resolve().parent.parent


def printed_command(summary: str) -> tuple[dict[str, str], list[str]]:
    """The variables and the command words of the summary's `dagster dev` command."""
    words = shlex.split(re.search(r"with this run's settings, with (.+)\)$", summary, re.MULTILINE).group(1))
    assignments = [word for word in words if re.fullmatch(r"[A-Z_]+=.*", word)]
    return dict(word.split("=", 1) for word in assignments), words[len(assignments):]


def wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str, poll_s: float = 2.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f} s"
        time.sleep(poll_s)


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


def graphql(port: int, query: str, variables: Mapping[str, object] | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": dict(variables or {})}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def serves_the_asset_graph(port: int) -> bool:
    return bool(graphql(port, "{ assetNodes { assetKey { path } } }").get("data", {}).get("assetNodes"))


@contextmanager
def dagster_dev(
    home: Path,
    env: Mapping[str, str],
    log_path: Path,
    *,
    timeout_s: float = 180,
    ready: Callable[[int], bool] = serves_the_asset_graph,
    cwd: Path = REPO_ROOT,
    command: Sequence[str] = ("dagster", "dev"),
) -> Iterator[int]:
    """``command`` (`dagster dev`, from the repository root unless ``cwd`` says otherwise) on
    127.0.0.1, in its own session with default signal handlers; yields its port once
    ``ready(port)`` (by default: the webserver answers with the asset graph), and stops every
    process it started, whatever happens."""
    port = free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)], cwd=cwd,
            env={**os.environ, **env, "DAGSTER_HOME": str(home)},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=restore_default_signals,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                assert process.poll() is None and time.monotonic() < deadline, (
                    f"dagster dev did not come up:\n{log_path.read_text()[-3000:]}"
                )
                try:
                    if ready(port):
                        break
                except (OSError, KeyError, TypeError):
                    pass
                time.sleep(2)
            yield port
        finally:
            stop_everything_under(process, home)
