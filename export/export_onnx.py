"""Exports a generator's decode step and its VQGAN decoder to ONNX.

    python export/export_onnx.py --model rar_b --random --out out/onnx/rar_b
    python export/export_onnx.py --model rar_b --weights rar_b.bin \\
        --tokenizer-weights maskgit-vqgan-imagenet-f16-256.bin --int8 --out out/onnx/rar_b
    python export/export_onnx.py --model bundled --int8 --out out/onnx/bundled

Without --weights the official models come from the Hugging Face cache (see rar_demo.hub) and
"bundled" from assets/bundled; --random uses random weights at the real sizes instead. The app
and CLI export on their own on first use (`--backend onnx`); this script is for inspecting or
shipping the files. The file layout is described in rar_demo/backends/onnx.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from rar_demo.backends.onnx_export import export_all
from rar_demo.hub import WeightsUnavailable, load_generator, load_tokenizer, random_models
from rar_demo.registry import MODEL_NAMES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    parser.add_argument("--weights", type=Path, help="generator checkpoint")
    parser.add_argument("--tokenizer-weights", type=Path, help="VQGAN checkpoint")
    parser.add_argument("--random", action="store_true", help="random weights, real sizes")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write int8 models (generator: dynamic; decoder: static)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.random and (args.weights or args.tokenizer_weights):
        parser.error("--random and --weights exclude each other")
    try:
        if args.random:
            model, tokenizer = random_models(args.model)
        else:
            model, _ = load_generator(args.model, args.weights)
            tokenizer = load_tokenizer(args.model, args.tokenizer_weights)
    except WeightsUnavailable as err:
        print(f"error: {err} (or pass --random)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    export_all(model, tokenizer, args.out, int8=args.int8)
    for path in sorted(args.out.iterdir()):
        print(f"{path}  {path.stat().st_size / 2**20:.1f} MiB")
    print(f"exported in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
