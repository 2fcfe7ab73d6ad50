"""Model servers as child processes on 127.0.0.1, and the embedded llama.cpp one (a GGUF model)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Self

import httpx

from mergeit_core.cpus import usable_cpus
from mergeit_core.models import KNOWN_MODELS, default_gguf_path, gguf_for, gguf_location
from mergeit_core.settings import SettingError

__all__ = ["LlamaCppServer", "default_gguf_path", "llama_cpp_servers", "llama_model_alias", "llama_model_path"]


def _free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _restore_default_signals() -> None:
    # Runs in the child between fork and exec. Ignored and blocked signals survive exec, and this
    # process may have inherited SIGTERM/SIGINT ignored: the server must still die on them.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})


class LocalModelServer(ABC):
    """An OpenAI-compatible server process on a free 127.0.0.1 port, in its own session.

    Leaving the context stops it surely: SIGTERM to its process group, SIGKILL after
    ``stop_timeout_s``, then SIGKILL to any descendant that had left the group.
    """

    description = "model server"  # in error messages

    def __init__(self, model_alias: str, *, startup_timeout_s: float, stop_timeout_s: float) -> None:
        self.model_alias = model_alias
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @abstractmethod
    def _command(self) -> list[str]:
        """The server's command line; it must serve ``model_alias`` on 127.0.0.1:``self.port``."""

    def _check_model(self) -> None:
        """Raise before starting anything when the model is plainly missing."""

    def _environment(self) -> dict[str, str] | None:
        """The server's environment; None: this process's."""
        return None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the server is not running")
        return self._process.pid

    def __enter__(self) -> Self:
        self._check_model()
        self.port = _free_local_port()
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            self._command(),
            env=self._environment(),
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
                    f"{self.description} exited with code {self._process.returncode}:\n{self.log_tail()}"
                )
            if self._serves_our_model():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.description} not ready after {self.startup_timeout_s}s:\n{self.log_tail()}")

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
            # Engines start worker processes of their own; one that made itself a session
            # leader would outlive the group signal.
            descendants = descendant_pids(process.pid)
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
            for pid in descendants:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None


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


class LlamaCppServer(LocalModelServer):
    """``python -m llama_cpp.server`` serving a GGUF file.

    llama-cpp-python answers one request at a time, so client concurrency only queues requests.
    """

    description = "llama.cpp server"

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
        self.cpu_extra_buffers = cpu_extra_buffers
        super().__init__(self.model_path.name, startup_timeout_s=startup_timeout_s, stop_timeout_s=stop_timeout_s)
        self.n_ctx = n_ctx
        # One core stays free for the caller: llama.cpp's threads wait on each other at every
        # step, so a thread losing its core to another process stalls all of them (measured on
        # 2 shared cores: 1 thread 22 tok/s steady, 2 threads 4-12 tok/s). Small models gain
        # little beyond 8 threads.
        self.threads = threads or min(max(usable_cpus() - 1, 1), 8)

    def _check_model(self) -> None:
        if not self.model_path.is_file():
            raise FileNotFoundError(f"GGUF model not found: {self.model_path}")

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


def descendant_pids(pid: int) -> list[int]:
    """Every process below ``pid``, from ``ps`` (empty where ps is missing)."""
    try:
        listing = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    children: dict[int, list[int]] = {}
    for line in listing.splitlines():
        child, parent = (int(field) for field in line.split())
        children.setdefault(parent, []).append(child)
    found, frontier = [], [pid]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += below
    return found


# Each llama-cpp-python server answers one request at a time, so the cores are shared out among
# several servers; past a few, each extra server costs its own KV cache for little gain.
MAX_DEFAULT_SERVERS = 4


def server_layout(servers: int | None = None) -> tuple[int, int]:
    """(servers, threads per server) for this machine: by default one single-thread server per
    usable core up to MAX_DEFAULT_SERVERS, the cores then shared out evenly."""
    cpus = usable_cpus()
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


def check_llama_model(model: str) -> None:
    """Refuse a model setting that names no GGUF, before anything runs: silently serving another
    model would mislabel every merge's provenance. Known models are not fetched here."""
    if not model or model in KNOWN_MODELS or Path(model).is_file():
        return
    raise SettingError(
        f"model {model!r} is neither a known model name ({', '.join(KNOWN_MODELS)}) nor an existing .gguf file"
    )


def llama_model_path(model: str) -> Path:
    """A .gguf path, a known model's name (fetched on first use) or empty for the default model."""
    check_llama_model(model)
    return gguf_for(model)


def llama_model_alias(model: str) -> str:
    """The name the embedded server serves ``model`` under (its GGUF's file name), known without
    fetching the model or starting a server."""
    check_llama_model(model)
    return gguf_location(model)[0].name
