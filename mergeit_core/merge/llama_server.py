"""The embedded llama.cpp server: a process on 127.0.0.1 that serves a GGUF model."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Self

import httpx

from mergeit_core.models import default_gguf_path, gguf_for

__all__ = ["LlamaCppServer", "default_gguf_path", "llama_model_path"]


def _free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _restore_default_signals() -> None:
    # Runs in the child between fork and exec. Ignored and blocked signals survive exec, and this
    # process may have inherited SIGTERM/SIGINT ignored: the server must still die on them.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})


# llama.cpp moves weights into "extra" CPU buffer types (AMX tiles, repacked layouts) when the CPU
# offers them. Seen with llama-cpp-python 0.3.36 built on a Xeon with AMX: decoding any batch of
# more than a few tokens through the AMX buffers segfaults the server (SmolLM2 Q4_1 and Qwen2.5
# Q4_K_M alike; a 10-token prompt is enough), while plain CPU buffers answer. The server has no
# option for it, so the child turns them off before the server loads the model.
_SERVER_WITH_PLAIN_CPU_BUFFERS = """
import runpy
import llama_cpp.llama_cpp as native

_default_params = native.llama_model_default_params

def _plain_cpu_buffers():
    params = _default_params()
    params.use_extra_bufts = False
    return params

native.llama_model_default_params = _plain_cpu_buffers
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


class LlamaCppServer:
    """``python -m llama_cpp.server`` on a free 127.0.0.1 port, in its own process group.

    Leaving the context stops the whole group: SIGTERM, then SIGKILL after ``stop_timeout_s``.
    llama-cpp-python answers one request at a time, so client concurrency only queues requests.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 4096,
        threads: int | None = None,
        startup_timeout_s: float = 120.0,
        stop_timeout_s: float = 10.0,
        cpu_extra_buffers: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.model_alias = self.model_path.name
        self.n_ctx = n_ctx
        # One core stays free for the caller: llama.cpp's threads wait on each other at every
        # step, so a thread losing its core to another process stalls all of them (measured on
        # 2 shared cores: 1 thread 22 tok/s steady, 2 threads 4-12 tok/s). Small models gain
        # little beyond 8 threads.
        self.threads = threads or min(max(_usable_cpus() - 1, 1), 8)
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.cpu_extra_buffers = cpu_extra_buffers
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the server is not running")
        return self._process.pid

    def _command(self) -> list[str]:
        options = {
            "--model": str(self.model_path),
            "--model_alias": self.model_alias,
            "--host": "127.0.0.1",
            "--port": str(self.port),
            "--n_ctx": str(self.n_ctx),
            "--n_threads": str(self.threads),
            "--n_threads_batch": str(self.threads),
            "--interrupt_requests": "False",
            "--verbose": "False",
        }
        launch = ["-m", "llama_cpp.server"] if self.cpu_extra_buffers else ["-c", _SERVER_WITH_PLAIN_CPU_BUFFERS]
        return [sys.executable, *launch, *(part for pair in options.items() for part in pair)]

    def __enter__(self) -> Self:
        if not self.model_path.is_file():
            raise FileNotFoundError(f"GGUF model not found: {self.model_path}")
        self.port = _free_local_port()
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_restore_default_signals,
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp server exited with code {self._process.returncode}:\n{self.log_tail()}"
                )
            if self._serves_our_model():
                return
            time.sleep(0.2)
        raise TimeoutError(f"llama.cpp server not ready after {self.startup_timeout_s}s:\n{self.log_tail()}")

    def _serves_our_model(self) -> bool:
        # Checking the alias, not just any answer, guards against another server that took the
        # port between our probe and the child's bind.
        try:
            response = httpx.get(f"{self.base_url}/models", timeout=1.0)
            return response.status_code == 200 and self.model_alias in {
                model.get("id") for model in response.json().get("data", [])
            }
        except (httpx.TransportError, ValueError):
            return False

    def log_tail(self, max_chars: int = 4000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - max_chars))
        return self._log.read().decode("utf-8", errors="replace")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pgid, signum)


def llama_model_path(model: str) -> Path:
    """A .gguf path, a known model's name (fetched on first use) or empty for the default model."""
    return gguf_for(model)
