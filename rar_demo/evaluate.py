"""Evaluates the bundled model: metrics JSON and a sample sheet.

    python -m rar_demo.evaluate --out runs/eval

Tokenizer: held-out reconstruction PSNR per artwork set and codebook use over the whole
dataset. Generator: held-out negative log-likelihood per token (nats), teacher-forced, in
raster and in random order; and recognition, as ImageNet generators are judged by a
pretrained classifier: the emoji identity classifier (classifier.py, trained with
`train classifier`) names the emoji of samples drawn at the model's default settings, for
--classes classes spread over every group, in each of ORDERS, and in raster and random order
at STEP_COUNTS sampler steps (parallel decoding); its score on the real held-out artwork is
the ceiling. Weights conditioned on the emoji groups (the first bundled model) are scored by
group: a sample counts where the classifier names an emoji of its group. Sheet: for each
group, 2 classes x ORDERS x 2 seeds.

--int8 also compares the ONNX export in fp32 with its int8 version (int8.png, and metrics):
greedy-token agreement, and the int8 decoder's PSNR against fp32 on the same tokens.
"""

from __future__ import annotations

import argparse
import json
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from .classifier import CLASSIFIER_PATH, load_classifier
from .config import SamplingConfig
from .data import CACHE_PATH, EmojiDataset, load_or_build
from .metrics import heldout_nll, psnr, recognition
from .orders import make_order
from .pipeline import Pipeline, load_pipeline
from .render import sheet, stack, to_uint8
from .sampler import StepEvent, generate
from .train import group_class_map
from .vqgan import to_tensor, tokenize

ORDERS: tuple[str, ...] = ("raster", "random", "spiral", "checkerboard", "center-out")
STEP_COUNTS: tuple[int, ...] = (128, 64, 32)  # parallel decoding, against 256 (one per token)


def _final(events: Iterator[StepEvent]) -> Tensor:
    (last,) = deque(events, maxlen=1)
    return last.canvas


def spread_classes(groups: Sequence[str], count: int, floor: int = 2) -> list[int]:
    """About `count` class ids, evenly spaced within each group, every group in proportion to
    its size but with at least `floor`: a sample of the classes that no group is missing
    from. count 0: `floor` from each group."""
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    picked = []
    for ids in members.values():
        n = min(len(ids), max(floor, round(count * len(ids) / len(groups))))
        picked.extend(ids[int(k * len(ids) / n)] for k in range(n))
    return sorted(picked)


@torch.inference_mode()
def draw(
    pipe: Pipeline,
    class_ids: Sequence[int],
    orders: Sequence[str],
    seed: int | Sequence[int],
    batch_size: int = 128,
    sampling: SamplingConfig | None = None,
) -> Tensor:
    """(N, 3, H, W) samples of class_ids[i] in orders[i] with seed (or seed[i]), at the default
    settings (or `sampling`), in batches. Each (class, seed) has its own noise and its own
    random order: samples with other seeds, or beside other samples, do not change it."""
    seeds = [seed] * len(class_ids) if isinstance(seed, int) else list(seed)
    if not len(class_ids) == len(orders) == len(seeds):
        raise ValueError("one order name (and one seed, if several) per class id")
    C = len(pipe.class_names)
    streams = [s * C + c for c, s in zip(class_ids, seeds, strict=True)]
    images = []
    for start in range(0, len(class_ids), batch_size):
        batch = slice(start, start + batch_size)
        permutations = torch.stack(
            [
                make_order(name, *pipe.grid, seed=stream)
                for name, stream in zip(orders[batch], streams[batch], strict=True)
            ]
        )
        labels = torch.tensor(list(class_ids[batch]))
        config = sampling or pipe.sampling
        canvas = generate(pipe.executor, labels, permutations, config, streams[batch])
        images.append(pipe.decode(canvas))
    return torch.cat(images)


def recognition_by_order(
    pipe: Pipeline,
    classifier: torch.nn.Module,
    class_ids: Sequence[int],
    seed: int = 0,
    orders: Sequence[str] = ORDERS,
    sampling: SamplingConfig | None = None,
    seeds: int = 1,
    class_map: Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """Top-1 / top-5 recognition of generated samples of `class_ids` (`seeds` each, drawn in
    one batched run), for each order; `class_map` as for `metrics.recognition`."""
    ids = list(class_ids) * seeds
    per_sample = [seed + s for s in range(seeds) for _ in class_ids]
    scores = {}
    for order in orders:
        samples = draw(pipe, ids, [order] * len(ids), per_sample, sampling=sampling)
        scores[order] = recognition(classifier, samples, torch.tensor(ids), class_map=class_map)
    return scores


def recognition_by_steps(
    pipe: Pipeline,
    classifier: torch.nn.Module,
    class_ids: Sequence[int],
    seed: int = 0,
    seeds: int = 1,
    class_map: Tensor | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Parallel decoding's quality: `recognition_by_order` in raster and random order at each
    of STEP_COUNTS sampler steps (cosine schedule)."""
    return {
        str(steps): recognition_by_order(
            pipe,
            classifier,
            class_ids,
            seed,
            ("raster", "random"),
            pipe.sampling.with_(steps=steps, schedule="cosine"),
            seeds,
            class_map,
        )
        for steps in STEP_COUNTS
    }


def tokenizer_metrics(pipe: Pipeline, data: EmojiDataset, codes: Tensor) -> dict:
    """Held-out PSNR (all sets, and per set) and codebook use, from `codes`, the (N, L)
    tokens of every image of `data`."""
    heldout = data.heldout_split()
    with torch.inference_mode():
        recon = torch.cat(
            [pipe.decode(c) for c in codes[torch.from_numpy(data.heldout)].split(256)]
        )
    scores = psnr(recon, to_tensor(heldout.images))
    per_set = {
        name: round(scores[torch.from_numpy(heldout.styles == s)].mean().item(), 2)
        for s, name in enumerate(data.style_names)
        if (heldout.styles == s).any()
    }
    return {
        "tokenizer_heldout_psnr_db": round(scores.mean().item(), 2),
        "tokenizer_heldout_psnr_db_per_set": per_set,
        "codebook_usage": round(codes.unique().numel() / pipe.tokenizer.config.codebook_size, 3),
    }


@torch.inference_mode()
def compare_int8(pipe: Pipeline, out: Path, class_ids: Sequence[int], seed: int = 0) -> dict:
    """fp32 vs int8 ONNX on `class_ids`, raster and random: same seed, so any difference is
    the quantization's."""
    from .backends.onnx import ensure_export, open_export

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
    for class_id in class_ids:
        a, b = (_final(p.stream(class_id, orders, seed, greedy)) for p in (fp32, int8))
        same, total = same + (a == b).sum().item(), total + a.numel()
        a, b = (_final(p.stream(class_id, orders, seed)) for p in (fp32, int8))
        reference = fp32.decode(a)
        decoder_psnr.append(psnr(int8.decode(a), reference))
        panels = torch.cat([reference, int8.decode(b)])
        rows.append(
            sheet(list(to_uint8(panels)), labels, scale=2, footer=pipe.class_names[class_id])
        )
    stack(rows).save(out / "int8.png")
    return {
        "int8_greedy_token_agreement": round(same / total, 4),
        "int8_decoder_psnr_db": round(torch.cat(decoder_psnr).mean().item(), 2),
    }


def sample_sheet(pipe: Pipeline, groups: Sequence[str], seeds: int = 2) -> Image.Image:
    """For each group, 2 classes x ORDERS x `seeds`, one row per class."""
    picked = spread_classes(groups, 0)
    ids = [c for c in picked for _ in ORDERS]
    by_seed = [draw(pipe, ids, ORDERS * len(picked), seed) for seed in range(seeds)]
    # (classes x orders, seeds, ...) -> per class: order-major, then seed (as the captions)
    panels = torch.stack(by_seed, 1).reshape(
        len(picked), len(ORDERS) * seeds, *by_seed[0].shape[1:]
    )
    rows = [
        sheet(
            list(to_uint8(row)),
            [f"{o[:6]} s{s}" for o in ORDERS for s in range(seeds)],
            scale=2,
            footer=pipe.class_names[c]
            if groups[c] == pipe.class_names[c]  # weights conditioned on the groups
            else f"{groups[c]}: {pipe.class_names[c]}",
        )
        for c, row in zip(picked, panels, strict=True)
    ]
    return stack(rows)


def evaluate(
    out: Path,
    data_path: Path,
    classes: int = 300,
    int8: bool = False,
    classifier_path: Path = CLASSIFIER_PATH,
    weights: Path | None = None,
    tokenizer_weights: Path | None = None,
    device: str = "cpu",
) -> dict:
    """Everything above for the bundled weights, or for candidate files `weights` (the
    generator) and `tokenizer_weights` from `train export`; sampling on `device`."""
    pipe = load_pipeline(
        "bundled", device=device, weights=weights, tokenizer_weights=tokenizer_weights
    )
    data = load_or_build(data_path)
    classifier, classifier_classes = load_classifier(classifier_path)
    if classifier_classes != data.class_names:
        raise SystemExit(f"the classifier at {classifier_path} was trained on other classes")
    heldout = data.heldout_split()
    labels = torch.from_numpy(heldout.labels)
    # Weights conditioned on the emoji groups (the first bundled model) are scored by group:
    # a sample counts where the classifier names an emoji of its group.
    groups, class_map = data.class_groups, None
    if pipe.class_names != data.class_names:
        if set(pipe.class_names) != set(data.class_groups):
            raise SystemExit(
                f"the bundled weights know {len(pipe.class_names)} classes, neither the "
                f"dataset's emoji ({len(data.class_names)}) nor its groups: evaluate weights "
                "trained on this dataset"
            )
        groups, class_map = tuple(pipe.class_names), group_class_map(groups, pipe.class_names)
        labels = class_map[labels]
    codes = tokenize(pipe.tokenizer, data.images)  # every image once; held out ones included
    tokens = codes[torch.from_numpy(data.heldout)]
    picked = spread_classes(groups, classes)
    seeds = max(1, round(classes / len(picked)))  # groups: several samples each
    scored = {"seeds": seeds, "class_map": class_map}
    metrics = {
        **tokenizer_metrics(pipe, data, codes),
        **{f"generator_{k}": v for k, v in heldout_nll(pipe.generator, tokens, labels).items()},
        "classifier_heldout_real": recognition(
            classifier, to_tensor(heldout.images), labels, class_map=class_map
        ),
        "recognition_of": "emoji" if class_map is None else "group",
        "recognition_classes": len(picked),
        "recognition_samples_per_class": seeds,
        "recognition": recognition_by_order(pipe, classifier, picked, **scored),
        "recognition_by_steps": recognition_by_steps(pipe, classifier, picked, **scored),
        "heldout_images": len(heldout),
        "bundled_bytes": sum(
            Path(p).stat().st_size
            for p in (
                weights or pipe.spec.generator_weights,
                tokenizer_weights or pipe.spec.tokenizer_weights,
            )
        ),
    }
    out.mkdir(parents=True, exist_ok=True)
    if int8:
        metrics |= compare_int8(pipe, out, spread_classes(groups, 0, floor=1))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    sample_sheet(pipe, groups).save(out / "samples.png")
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
    parser.add_argument("--classes", type=int, default=300, help="classes scored per order")
    parser.add_argument("--classifier", type=Path, default=CLASSIFIER_PATH)
    parser.add_argument("--int8", action="store_true", help="also compare ONNX fp32 vs int8")
    parser.add_argument("--weights", type=Path, help="a candidate generator file, not the shipped")
    parser.add_argument("--tokenizer-weights", type=Path, help="a candidate tokenizer file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    evaluate(
        args.out,
        args.data,
        args.classes,
        args.int8,
        args.classifier,
        args.weights,
        args.tokenizer_weights,
        args.device,
    )


if __name__ == "__main__":
    main()
