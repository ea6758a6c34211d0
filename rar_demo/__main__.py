"""Command line: `python -m rar_demo generate|edit|classes ...` (see --help)."""

from __future__ import annotations

import argparse
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import torch

from .backends import BACKENDS
from .config import SCHEDULES, SamplingConfig
from .hub import WeightsUnavailable, class_table
from .masks import MASK_PRESETS, edit_source
from .orders import ORDER_NAMES
from .pipeline import DTYPES, Pipeline, class_label, load_pipeline
from .registry import MODEL_NAMES
from .render import display_scale, mark_progress, save_animation, sheet, to_uint8
from .sampler import StepEvent
from .vqgan import to_tensor

GIF_FRAMES = 64


def _sampling(pipe: Pipeline, args: argparse.Namespace) -> SamplingConfig:
    overrides = {
        "guidance_scale": args.cfg,
        "guidance_power": args.cfg_power,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "steps": args.steps,
        "schedule": args.schedule,
    }
    config = pipe.sampling.with_(**{k: v for k, v in overrides.items() if v is not None})
    return config.with_(greedy=True) if args.greedy else config


def _pipeline(args: argparse.Namespace) -> Pipeline:
    return load_pipeline(
        args.model,
        device=args.device,
        backend=args.backend,
        int8=args.int8,
        weights=args.weights,
        tokenizer_weights=args.tokenizer_weights,
        dtype=DTYPES[args.dtype] if args.dtype else None,
        compile=args.compile,
    )


def _final(events: Iterator[StepEvent]) -> StepEvent:
    (last,) = deque(events, maxlen=1)
    return last


def edit(args: argparse.Namespace) -> None:
    pipe = _pipeline(args)
    class_id = pipe.class_id(args.class_)
    resolution = pipe.tokenizer.config.resolution
    pixels, regenerate = edit_source(args.image, args.mask, resolution, pipe.grid, args.seed)
    names = args.order or ["random"]
    orders, prompt = pipe.edit_inputs(pixels, regenerate, names, args.seed)
    event = _final(pipe.stream(class_id, orders, args.seed, _sampling(pipe, args), prompt))
    source = mark_progress(to_tensor(pixels[None]), prompt[:1], None, pipe.grid)
    finals = to_uint8(pipe.decode(event.canvas))
    name = pipe.class_names[class_id]
    cells = int(regenerate.sum())
    scale = args.scale or display_scale(resolution)
    footer = f"{pipe.name} | {name} | {cells} of {prompt.shape[1]} cells | seed {args.seed}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet([*source, *finals], ["source", *names], scale=scale, footer=footer).save(args.out)
    print(f"wrote {args.out} ({name}, {cells} cells regenerated, orders: {', '.join(names)})")


def generate(args: argparse.Namespace) -> None:
    pipe = _pipeline(args)
    class_id = pipe.class_id(args.class_)
    orders = args.order or ["raster"]
    sampling = _sampling(pipe, args)
    scale = args.scale or display_scale(pipe.tokenizer.config.resolution)
    every = max(1, pipe.generator.config.image_seq_len // GIF_FRAMES)
    frames, event = [], None
    for event in pipe.stream(class_id, pipe.orders(orders, args.seed), args.seed, sampling):
        if args.gif and (event.step % every == 0 or event.done):
            pixels = pipe.decode(event.canvas)
            panels = mark_progress(
                pixels, event.canvas, None if event.done else event.positions, pipe.grid
            )
            frames.append(
                sheet(
                    panels,
                    orders,
                    scale=scale,
                    footer=f"step {event.step + 1}/{event.num_steps}",
                )
            )
    finals = to_uint8(pipe.decode(event.canvas))
    name = pipe.class_names[class_id]
    title = f"{pipe.name} | {name} | seed {args.seed} | cfg {sampling.guidance_scale:g}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet(finals, orders, scale=scale, footer=title).save(args.out)
    print(f"wrote {args.out} ({name}, orders: {', '.join(orders)}, seed {args.seed})")
    if args.gif:
        gif = save_animation(frames, args.out.with_suffix(".gif"))
        print(f"wrote {gif} ({len(frames)} frames)")


def list_classes(args: argparse.Namespace) -> None:
    """One line per class: id, label (with its emoji where the model has them), group. Reads
    only the class list, never the weights (no download)."""
    names, glyphs, groups = class_table(args.model, args.weights)
    text = (args.search or "").lower()
    for i, name in enumerate(names):
        label = class_label(name, glyphs[i] if glyphs else None)
        if text in label.lower():
            print(f"{i}\t{label}\t{groups[i] if groups else ''}".rstrip())


def _image_parser() -> argparse.ArgumentParser:
    """What generate and edit share: model, class, orders, sampling, runtime, output."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="bundled", help=f"one of {', '.join(MODEL_NAMES)}")
    common.add_argument(
        "--class",
        dest="class_",
        metavar="CLASS",
        required=True,
        help="class name or id (207 or 'golden retriever'; see `classes`), or a class's emoji",
    )
    common.add_argument(
        "--order",
        action="append",
        help=f"one of {', '.join(ORDER_NAMES)}; repeat for a side-by-side sheet",
    )
    common.add_argument("--weights", type=Path, help="local generator weights instead of the Hub")
    common.add_argument("--tokenizer-weights", type=Path, help="local tokenizer weights")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--cfg", type=float, help="classifier-free guidance scale (0 = off)")
    common.add_argument("--cfg-power", type=float, help="power of the cosine guidance schedule")
    common.add_argument("--temperature", type=float)
    common.add_argument("--top-k", type=int)
    common.add_argument("--top-p", type=float)
    common.add_argument("--greedy", action="store_true", help="always take the likeliest token")
    common.add_argument(
        "--steps",
        type=int,
        help="sampler steps (default: one per token); fewer generate several tokens per step",
    )
    common.add_argument(
        "--schedule", choices=SCHEDULES, help="tokens per step with --steps (default constant)"
    )
    common.add_argument(
        "--scale", type=int, default=None, help="pixel upscaling of the sheet (default: to 256 px)"
    )
    common.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    common.add_argument(
        "--backend",
        default="torch",
        choices=BACKENDS,
        help="onnx: run an ONNX export with ONNX Runtime (exported on first use, then cached)",
    )
    common.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="generator weights (default: bf16 for official models on a GPU, else fp32)",
    )
    common.add_argument(
        "--compile",
        action="store_true",
        help="torch backend: torch.compile the decode step (slow first run, faster steps)",
    )
    common.add_argument(
        "--int8",
        action="store_true",
        help="onnx backend, official models: int8 weights (faster; samples differ from fp32)",
    )
    return common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rar_demo")
    sub = parser.add_subparsers(dest="command", required=True)
    common = _image_parser()
    gen = sub.add_parser(
        "generate",
        parents=[common],
        help="generate an image (or a side-by-side sheet of orders; default raster)",
    )
    gen.add_argument("--out", type=Path, default=Path("rar.png"))
    gen.add_argument("--gif", action="store_true", help="also write the token-by-token animation")
    gen.set_defaults(run=generate)
    ed = sub.add_parser(
        "edit",
        parents=[common],
        help="regenerate part of a picture (inpaint, outpaint, re-class; default order random)",
    )
    ed.add_argument("--image", required=True, help="the picture to edit (any size: centre-cropped)")
    ed.add_argument(
        "--mask",
        required=True,
        help=f"what to regenerate: one of {', '.join(MASK_PRESETS)}, or a mask PNG (white or "
        "opaque = regenerate) at the picture's size, the model's or the token grid's",
    )
    ed.add_argument("--out", type=Path, default=Path("edit.png"))
    ed.set_defaults(run=edit)
    classes = sub.add_parser("classes", help="list a model's classes (id, name, group)")
    classes.add_argument("--model", default="bundled", help=f"one of {', '.join(MODEL_NAMES)}")
    classes.add_argument("--weights", type=Path, help="local generator weights instead of the Hub")
    classes.add_argument("--search", help="only classes whose name (or emoji) contains this")
    classes.set_defaults(run=list_classes)
    args = parser.parse_args(argv)
    if len(getattr(args, "order", None) or []) > 8:
        parser.error("at most 8 orders")
    try:
        args.run(args)
    except (ValueError, WeightsUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
