"""Evaluates the bundled model: metrics JSON and a sample sheet.

    python -m rar_demo.evaluate --out runs/eval

Tokenizer: held-out reconstruction PSNR and codebook usage over the whole dataset. Generator:
held-out negative log-likelihood per token (nats), teacher-forced, in raster and in random
order. Sheet: every class x (raster, random) x several seeds, sampled with the model defaults.

--int8 also compares the ONNX export in fp32 with its int8 version (int8.png, and metrics):
greedy-token agreement, and the int8 decoder's PSNR against fp32 on the same tokens.
"""

from __future__ import annotations

import argparse
import json
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from .data import CACHE_PATH, load_or_build
from .metrics import heldout_nll, psnr
from .pipeline import Pipeline, load_pipeline
from .registry import BUNDLED_DIR
from .render import sheet, stack, to_uint8
from .sampler import StepEvent
from .vqgan import to_tensor, tokenize


def _final(events: Iterator[StepEvent]) -> Tensor:
    (last,) = deque(events, maxlen=1)
    return last.canvas


@torch.inference_mode()
def compare_int8(pipe: Pipeline, out: Path, seed: int = 0) -> dict:
    """fp32 vs int8 ONNX on every class, raster and random: same seed, so any difference is
    the quantization's."""
    from .backends.onnx import open_export
    from .backends.onnx_export import ensure_export

    directory = ensure_export(pipe.name, pipe.generator, pipe.tokenizer, int8=True)

    def on_onnx(quantized: bool) -> Pipeline:
        executor, decoder = open_export(directory, quantized)
        return replace(pipe, executor=executor, decoder=decoder)

    fp32, int8 = on_onnx(False), on_onnx(True)
    names = ["raster", "random"]
    orders = pipe.orders(names, seed)
    labels = [f"{q} {o[:3]}" for q in ("fp32", "int8") for o in names]
    greedy = pipe.sampling.with_(greedy=True)
    same, total, rows, decoder_psnr = 0, 0, [], []
    for class_id, name in enumerate(pipe.class_names):
        a, b = (_final(p.stream(class_id, orders, seed, greedy)) for p in (fp32, int8))
        same, total = same + (a == b).sum().item(), total + a.numel()
        a, b = (_final(p.stream(class_id, orders, seed)) for p in (fp32, int8))
        reference = fp32.decode(a)
        decoder_psnr.append(psnr(int8.decode(a), reference))
        panels = torch.cat([reference, int8.decode(b)])
        rows.append(sheet(list(to_uint8(panels)), labels, scale=2, footer=name))
    stack(rows).save(out / "int8.png")
    return {
        "int8_greedy_token_agreement": round(same / total, 4),
        "int8_decoder_psnr_db": round(torch.cat(decoder_psnr).mean().item(), 2),
    }


@torch.inference_mode()
def evaluate(out: Path, data_path: Path, seeds: int, int8: bool = False) -> dict:
    pipe = load_pipeline("bundled")
    data = load_or_build(data_path)
    if pipe.class_names != data.class_names:
        raise SystemExit(
            f"the bundled weights know {len(pipe.class_names)} classes, the dataset at "
            f"{data_path} {len(data.class_names)}: evaluate weights trained on this dataset"
        )
    heldout = data.heldout_split()
    images = to_tensor(heldout.images)
    recon = torch.cat([pipe.decode(pipe.tokenizer.encode(b)) for b in images.split(256)])
    all_codes = tokenize(pipe.tokenizer, data.images)
    tokens = tokenize(pipe.tokenizer, heldout.images)
    labels = torch.from_numpy(heldout.labels)
    metrics = {
        "tokenizer_heldout_psnr_db": round(psnr(recon, images).mean().item(), 2),
        "codebook_usage": round(
            all_codes.unique().numel() / pipe.tokenizer.config.codebook_size, 3
        ),
        **{f"generator_{k}": v for k, v in heldout_nll(pipe.generator, tokens, labels).items()},
        "heldout_images": len(heldout),
        "bundled_bytes": sum(p.stat().st_size for p in BUNDLED_DIR.glob("*.safetensors")),
    }
    out.mkdir(parents=True, exist_ok=True)
    if int8:
        metrics |= compare_int8(pipe, out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")

    rows = []
    for class_id, name in enumerate(pipe.class_names):
        panels = []
        for seed in range(seeds):
            canvas = _final(pipe.stream(class_id, pipe.orders(["raster", "random"], seed), seed))
            panels.extend(to_uint8(pipe.decode(canvas)))
        rows.append(
            sheet(
                panels,
                [f"{o} s{s}" for s in range(seeds) for o in ("ras", "rnd")],
                scale=2,
                footer=name,
            )
        )
    stack(rows).save(out / "samples.png")
    print(json.dumps(metrics))
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rar_demo.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("runs/eval"))
    parser.add_argument("--data", type=Path, default=CACHE_PATH)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--int8", action="store_true", help="also compare ONNX fp32 vs int8")
    args = parser.parse_args(argv)
    evaluate(args.out, args.data, args.seeds, args.int8)


if __name__ == "__main__":
    main()
