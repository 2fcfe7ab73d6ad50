"""LlamaCppServer's process handling, with a tiny stand-in server instead of llama.cpp."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from mergeit_core.merge.llama_server import LlamaCppServer

# Answers /v1/models with the model alias and its own SIGTERM disposition; may ignore SIGTERM.
STAND_IN = """
import http.server, json, signal, sys
port, alias, ignore_sigterm = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "ignore"
disposition = "default" if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else "not default"
if ignore_sigterm:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": alias}], "sigterm": disposition}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


class StandInServer(LlamaCppServer):
    def __init__(self, model_path: Path, *, ignore_sigterm: bool, stop_timeout_s: float) -> None:
        super().__init__(model_path, startup_timeout_s=20, stop_timeout_s=stop_timeout_s)
        self.ignore_sigterm = ignore_sigterm

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            STAND_IN,
            str(self.port),
            self.model_alias,
            "ignore" if self.ignore_sigterm else "keep",
        ]


class CrashingServer(LlamaCppServer):
    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            "import sys; print('model file is corrupt', file=sys.stderr); sys.exit(3)",
        ]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF")
    return path


@contextmanager
def sigterm_ignored_and_blocked_here() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        signal.signal(signal.SIGTERM, previous)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_child_gets_default_sigterm_even_when_this_process_ignores_it(model_file: Path) -> None:
    # A long stop timeout: only a working SIGTERM, not the SIGKILL fallback, stops it in time.
    with (
        sigterm_ignored_and_blocked_here(),
        StandInServer(model_file, ignore_sigterm=False, stop_timeout_s=30) as server,
    ):
        assert httpx.get(f"{server.base_url}/models").json()["sigterm"] == "default"
        pgid = server.pid
        started = time.monotonic()

    assert time.monotonic() - started < 5
    assert not group_alive(pgid)


def test_a_server_deaf_to_sigterm_is_killed_after_the_stop_timeout(model_file: Path) -> None:
    with StandInServer(model_file, ignore_sigterm=True, stop_timeout_s=0.5) as server:
        pgid = server.pid
        started = time.monotonic()

    assert 0.5 <= time.monotonic() - started < 5
    assert not group_alive(pgid)


def test_a_server_that_dies_at_start_reports_its_output(model_file: Path) -> None:
    with pytest.raises(RuntimeError) as raised, CrashingServer(model_file, startup_timeout_s=20):
        pass
    assert "exited with code 3" in str(raised.value) and "model file is corrupt" in str(raised.value)


def test_a_missing_model_file_is_reported_before_starting_anything(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.gguf"), LlamaCppServer(tmp_path / "missing.gguf"):
        pass


class ForeignServer(StandInServer):
    """Something answers on the port, but not with our model."""

    def _command(self) -> list[str]:
        return [sys.executable, "-c", STAND_IN, str(self.port), "another-model.gguf", "keep"]


def test_an_answer_without_our_model_is_not_taken_for_readiness(model_file: Path) -> None:
    server = ForeignServer(model_file, ignore_sigterm=False, stop_timeout_s=5)
    server.startup_timeout_s = 2

    with pytest.raises(TimeoutError, match="not ready after 2"), server:
        pass
