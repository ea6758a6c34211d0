"""Training for the bundled offline model: the MaskGIT-VQGAN tokenizer, then RAR on its tokens.

    python -m rar_demo.train tokenizer --out runs/tokenizer --steps 3000
    python -m rar_demo.train decoder --tokenizer runs/tokenizer --out runs/decoder --steps 600
    python -m rar_demo.train generator --tokenizer runs/tokenizer --out runs/generator --steps 3000
    python -m rar_demo.train export --tokenizer runs/decoder --generator runs/generator

Every training stage runs on CUDA when present, else CPU, checkpoints to OUT/ckpt.pt every
--save-every steps and resumes from it; progress goes to stdout and OUT/log.jsonl as JSON lines
(held-out metrics from rar_demo.metrics). `export` writes the fp16 files of assets/bundled.

The generator follows the RAR recipe (paper, Sec. 3 and 4.1): each sample is permuted to a
random order with probability r, r = 1 for the first half of training and then annealed
linearly to 0 by three quarters (the official 125k/187.5k of 250k steps; `--final-random-ratio`
ends it above 0), the class label is
dropped 10% of the time for classifier-free guidance, AdamW with cosine LR after warmup.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import hub
from .classifier import CLASSIFIER_PATH, EmojiClassifier, augment
from .config import (
    CLASSIFIER_PRESETS,
    RAR_PRESETS,
    VQGAN_PRESETS,
    ClassifierConfig,
    RARConfig,
    VQGANConfig,
)
from .data import CACHE_PATH, load_or_build
from .metrics import heldout_nll, psnr, recognition
from .model import RAR, condition_ids
from .orders import sample_orders
from .registry import BUNDLED_DIR
from .vqgan import VQGAN, to_tensor, tokenize

LABEL_DROP = 0.1
COMMITMENT = 0.25


def random_ratio(step: int, total: int, final: float = 0.0) -> float:
    """Probability of a random order: 1 until 50% of training, then linear to `final` at 75%.
    The paper ends at 0 (raster only); a small model forgets random orders in that quarter."""
    start, end = 0.5 * total, 0.75 * total
    return final + (1.0 - final) * float(np.clip((end - step) / (end - start), 0.0, 1.0))


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def rar_loss(model: RAR, tokens: Tensor, labels: Tensor, orders: Tensor) -> Tensor:
    logits = model(tokens, labels, orders)[:, :-1]  # (B, L, V); the last row has no target
    targets = tokens.gather(1, orders)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def vq_forward(model: VQGAN, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Reconstruction with a straight-through quantizer: (recon, codebook+commit loss, codes)."""
    z = model.encoder(images)
    codes = model.quantize.codes(z)
    zq = model.quantize.lookup(codes, z.shape[-2:])
    vq_loss = F.mse_loss(zq, z.detach()) + COMMITMENT * F.mse_loss(z, zq.detach())
    zq = z + (zq - z).detach()
    return model.decoder(zq), vq_loss, codes


def random_crop(images: Tensor, size: int, gen: torch.Generator) -> Tensor:
    """One random crop and flip for the whole batch: the tokenizer is fully convolutional, so
    small crops train the same weights at a fraction of the cost."""
    H, W = images.shape[-2:]
    top, left = (torch.randint(0, n - size + 1, (1,), generator=gen).item() for n in (H, W))
    crop = images[..., top : top + size, left : left + size]
    return crop.flip(-1) if torch.rand(1, generator=gen).item() < 0.5 else crop


def batches(n: int, batch: int, gen: torch.Generator) -> Iterator[Tensor]:
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


def balanced_batches(labels: Tensor, batch: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Batches in which every class is equally likely, however many images it has: People &
    Body is 59% of the emoji (skin tones), Activities 2%."""
    weights = 1.0 / torch.bincount(labels)[labels].double()
    while True:
        yield torch.multinomial(weights, batch, replacement=True, generator=gen)


class Run:
    """Checkpointing and logging for one training run in its own folder."""

    def __init__(self, out: Path, args: argparse.Namespace) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.ckpt = out / "ckpt.pt"
        self.args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        self.t0 = time.time()

    def resume(
        self, model: torch.nn.Module, opt: torch.optim.Optimizer
    ) -> tuple[int, torch.Generator]:
        """The step to go on from (0 for a new run), the checkpoint's state loaded, and the
        run's random stream for the steps from there (seeded by --seed and that step)."""
        step = 0
        if self.ckpt.exists():
            state = torch.load(self.ckpt, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            step = state["step"]
            self.log({"event": "resumed", "step": step})
        return step, torch.Generator().manual_seed(self.args["seed"] + step)

    def set_lr(self, opt: torch.optim.Optimizer, step: int) -> float:
        """Warmup then cosine over --steps, peaking at --lr; returns this step's rate."""
        lr = learning_rate(step, self.args["steps"], self.args["lr"], self.args["warmup"])
        for group in opt.param_groups:
            group["lr"] = lr
        return lr

    def save(
        self, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, config: dict
    ) -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "config": config,
            "args": self.args,
        }
        tmp = self.ckpt.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.ckpt)

    def log(self, record: dict) -> None:
        record = {"t": round(time.time() - self.t0, 1), **record}
        line = json.dumps(record)
        print(line, flush=True)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(line + "\n")


def load_checkpoint(folder: Path) -> tuple[dict, dict]:
    """(config dict, model state dict) of a training run's latest checkpoint."""
    state = torch.load(Path(folder) / "ckpt.pt", map_location="cpu", weights_only=True)
    return state["config"], state["model"]


def tokenizer_from_run(path: Path, device: str = "cpu") -> VQGAN:
    """A tokenizer from a training run's folder, or from exported bundled weights (a file),
    so a later session can go on from what ships in assets/."""
    path = Path(path)
    if path.is_file():
        return hub.load_tokenizer("bundled", weights=path, device=device).requires_grad_(True)
    config, weights = load_checkpoint(path)
    model = VQGAN(VQGANConfig.from_dict(config))
    model.load_state_dict(weights)
    return model.to(device).eval()


def train_tokenizer(args: argparse.Namespace) -> None:
    device = args.device
    data = load_or_build(args.data)
    train, heldout = data.train(), data.heldout_split()
    images = to_tensor(train.images).to(device)
    test_images = to_tensor(heldout.images).to(device)
    torch.manual_seed(args.seed)
    if args.init:  # fine-tune: e.g. the shipped bundled tokenizer on new artwork
        model = tokenizer_from_run(args.init, device).train()
    else:
        model = VQGAN(VQGAN_PRESETS[args.preset]).to(device)
    config = model.config
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    run = Run(args.out, args)
    start, gen = run.resume(model, opt)
    usage = torch.zeros(config.codebook_size, device=device)
    batch_iter = batches(len(images), args.batch_size, gen)
    for step in range(start, args.steps):
        run.set_lr(opt, step)
        x = random_crop(images[next(batch_iter).to(device)], args.crop, gen)
        recon, vq_loss, codes = vq_forward(model, x)
        rec_loss = F.mse_loss(recon, x) + 0.1 * F.l1_loss(recon, x)
        loss = rec_loss + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        usage.mul_(0.99).index_add_(0, codes.flatten(), torch.ones(codes.numel(), device=device))
        if (step + 1) % args.restart_every == 0 and step + 1 < 0.8 * args.steps:
            restarted = restart_dead_codes(model, x, usage, gen)
            run.log({"step": step + 1, "restarted_codes": restarted})
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            with torch.no_grad():
                rec = model.decode(model.encode(test_images[:256]))
            run.log(
                {
                    "step": step + 1,
                    "loss": round(loss.item(), 5),
                    "heldout_psnr": round(psnr(rec, test_images[:256]).mean().item(), 2),
                    "codes_in_use": int((usage > 1e-3).sum()),
                    "lr": opt.param_groups[0]["lr"],
                }
            )
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            run.save(model, opt, step + 1, config.to_dict())


def train_decoder(args: argparse.Namespace) -> None:
    """Second tokenizer stage: the decoder alone, on whole images. The encoder and codebook are
    frozen, so the tokens stay the same and a generator can train on them meanwhile."""
    device = args.device
    data = load_or_build(args.data)
    model = tokenizer_from_run(args.tokenizer, device).train()
    model.encoder.requires_grad_(False)
    model.quantize.requires_grad_(False)
    train = data.train()
    images = to_tensor(train.images).to(device)
    codes = torch.stack(
        [tokenize(model, train.images), tokenize(model, train.images, flip=True)]
    ).to(device)
    test_images = to_tensor(data.heldout_split().images[:256]).to(device)
    opt = torch.optim.AdamW(model.decoder.parameters(), lr=args.lr, betas=(0.9, 0.99))
    run = Run(args.out, args)
    start, gen = run.resume(model, opt)
    batch_iter = batches(len(images), args.batch_size, gen)
    for step in range(start, args.steps):
        run.set_lr(opt, step)
        idx, flip = next(batch_iter).to(device), int(torch.rand(1, generator=gen) < 0.5)
        target = images[idx].flip(-1) if flip else images[idx]
        recon = model.decoder(model.quantize.lookup(codes[flip, idx], model.grid))
        loss = F.mse_loss(recon, target) + 0.1 * F.l1_loss(recon, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            with torch.no_grad():
                rec = model.decode(model.encode(test_images))
            run.log(
                {
                    "step": step + 1,
                    "loss": round(loss.item(), 5),
                    "heldout_psnr": round(psnr(rec, test_images).mean().item(), 2),
                }
            )
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            run.save(model, opt, step + 1, model.config.to_dict())


@torch.no_grad()
def restart_dead_codes(model: VQGAN, images: Tensor, usage: Tensor, gen: torch.Generator) -> int:
    """Moves codebook entries nobody picks onto random encoder outputs (keeps usage high)."""
    dead = torch.nonzero(usage < 1e-3).flatten()
    if not len(dead):
        return 0
    z = model.encoder(images).permute(0, 2, 3, 1).flatten(0, 2)  # (B*h*w, C)
    pick = torch.randint(len(z), (len(dead),), generator=gen).to(z.device)
    model.quantize.embedding.weight[dead] = z[pick]
    usage[dead] = 1.0
    return len(dead)


def generator_config(
    preset: str,
    num_classes: int,
    codebook_size: int,
    layers: int | None = None,
    width: int | None = None,
) -> RARConfig:
    """The preset for this data; `layers` and `width` (hidden size, with 32-wide heads and a
    4x MLP as in the preset) override its size."""
    config = replace(
        RAR_PRESETS[preset], condition_num_classes=num_classes, codebook_size=codebook_size
    )
    if layers:
        config = replace(config, num_hidden_layers=layers)
    if width:
        if width % 32:
            raise ValueError(f"width must be a multiple of 32 (the head size), got {width}")
        config = replace(
            config, hidden_size=width, num_attention_heads=width // 32, intermediate_size=4 * width
        )
    return config


def grow(model: RAR, source: RAR, class_map: Tensor | None = None) -> None:
    """Loads `source` into `model`, which may be deeper: the source blocks keep their order,
    spread evenly, and the other blocks keep their adaLN-Zero initialisation, under which a
    block is the identity. So the grown model starts out computing exactly what source does.

    `class_map` (C,) lets `model` have other classes: class c starts from source class
    class_map[c] (e.g. the emoji "fox" from the group "Animals & Nature"); the null class and
    the token rows carry over."""
    n, m = len(source.blocks), len(model.blocks)
    classes = model.config.condition_num_classes
    expected = replace(source.config, num_hidden_layers=m, condition_num_classes=classes)
    if m < n or expected != model.config:
        raise ValueError(f"a generator of {n} layers cannot start this one of {m}")
    if class_map is None and classes != source.config.condition_num_classes:
        raise ValueError("a generator with other classes needs a class_map")
    slots = [i * m // n for i in range(n)]
    state = {}
    for key, value in source.state_dict().items():
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            key = f"blocks.{slots[int(i)]}.{rest}"
        state[key] = value
    if class_map is not None:
        if class_map.shape != (classes,) or not (
            0 <= class_map.min() and class_map.max() < source.config.condition_num_classes
        ):
            raise ValueError(f"class_map must be ({classes},) source class ids")
        rows = torch.arange(model.config.codebook_size + 1)  # image tokens and the mask token
        labels = torch.cat([class_map, torch.tensor([source.config.null_class])])
        rows = torch.cat([rows, condition_ids(source.config, labels)])
        state["embeddings.weight"] = state["embeddings.weight"][rows]
    missing, _ = model.load_state_dict(state, strict=False)
    new = tuple(f"blocks.{i}." for i in set(range(m)) - set(slots))
    assert all(k.startswith(new) for k in missing), missing


def group_class_map(class_groups: tuple[str, ...], source_classes: tuple[str, ...]) -> Tensor:
    """(C,) each class's source class: the one named after its group (the first bundled model
    was conditioned on the emoji groups), else class 0. `grow` starts each class from it;
    evaluate scores group-conditioned weights by it."""
    index = {name: i for i, name in enumerate(source_classes)}
    return torch.tensor([index.get(group, 0) for group in class_groups])


def cached_tokens(tokenizer: VQGAN, images: np.ndarray, folder: Path, flip: bool = False) -> Tensor:
    """`tokenize`, kept in folder under a key of the tokenizer's weights and the images: a resumed
    generator run starts training at once instead of re-encoding the dataset for minutes."""
    key = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    key.update(bytes([flip]))
    for name, value in tokenizer.state_dict().items():
        key.update(name.encode())
        key.update(value.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    path = folder / f"tokens-{key.hexdigest()[:16]}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    tokens = tokenize(tokenizer, images, flip)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(tokens, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)  # never a truncated cache
    return tokens


def train_generator(args: argparse.Namespace) -> None:
    device = args.device
    data = load_or_build(args.data)
    tokenizer = tokenizer_from_run(args.tokenizer, device)
    train, heldout = data.train(), data.heldout_split()
    cache = Path(args.data).parent
    # A mirrored emoji is still that emoji (mostly: arrows and flags turn): twice the data.
    tokens = torch.cat(
        [
            cached_tokens(tokenizer, train.images, cache),
            cached_tokens(tokenizer, train.images, cache, flip=True),
        ]
    )
    labels = torch.from_numpy(train.labels).repeat(2)
    heldout_tokens, heldout_labels = (
        cached_tokens(tokenizer, heldout.images, cache),
        torch.from_numpy(heldout.labels),
    )
    config = generator_config(
        args.preset, len(data.class_names), tokenizer.config.codebook_size, args.layers, args.width
    )
    torch.manual_seed(args.seed)
    model = RAR(config).to(device)
    if args.init:  # go on from exported weights (fp16), e.g. the shipped bundled generator
        source, source_classes = hub.load_generator("bundled", weights=args.init)
        same = source_classes == data.class_names
        grow(model, source, None if same else group_class_map(data.class_groups, source_classes))
    # As in the official recipe: no weight decay on norms, biases and embedding tables.
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.03}, {"params": rest, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.96),
    )
    run = Run(args.out, args)
    start, gen = run.resume(model, opt)
    if args.balanced:
        batch_iter = balanced_batches(labels, args.batch_size, gen)
    else:
        batch_iter = batches(len(tokens), args.batch_size, gen)
    L = config.image_seq_len
    for step in range(start, args.steps):
        lr = run.set_lr(opt, step)
        idx = next(batch_iter)
        x, y = tokens[idx].to(device), labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < LABEL_DROP] = config.null_class
        ratio = random_ratio(step, args.steps, args.final_random_ratio)
        orders = sample_orders(len(idx), L, ratio, gen).to(device)
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=args.bf16):
            loss = rar_loss(model, x, y.to(device), orders)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            run.log(
                {"step": step + 1, "loss": round(loss.item(), 4), "random_ratio": ratio, "lr": lr}
            )
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            run.save(model, opt, step + 1, config.to_dict())
            run.log({"step": step + 1, **heldout_nll(model, heldout_tokens, heldout_labels)})


def train_classifier(args: argparse.Namespace) -> None:
    """The identity classifier of evaluate.py, on the training artwork, augmented; with
    --tokenizer also on that tokenizer's reconstructions, as generated samples come out of
    its decoder. Held-out artwork measures the ceiling a generator's samples are held to."""
    device = args.device
    data = load_or_build(args.data)
    train, heldout = data.train(), data.heldout_split()
    images, labels = to_tensor(train.images), torch.from_numpy(train.labels)
    test_images, test_labels = to_tensor(heldout.images), torch.from_numpy(heldout.labels)
    if args.tokenizer:
        tokenizer = tokenizer_from_run(args.tokenizer)
        images = torch.cat([images, reconstruct(tokenizer, images)])
        labels = labels.repeat(2)
    images, labels = images.to(device), labels.to(device)
    config = replace(CLASSIFIER_PRESETS[args.preset], num_classes=len(data.class_names))
    torch.manual_seed(args.seed)
    model = EmojiClassifier(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    run = Run(args.out, args)
    start, gen = run.resume(model, opt)
    batch_iter = batches(len(images), args.batch_size, gen)
    for step in range(start, args.steps):
        run.set_lr(opt, step)
        idx = next(batch_iter).to(device)
        model.train()
        logits = model(augment(images[idx], gen))
        loss = F.cross_entropy(logits, labels[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            model.eval()
            scores = recognition(model, test_images.to(device), test_labels)
            heldout_scores = {f"heldout_{k}": v for k, v in scores.items()}
            run.log({"step": step + 1, "loss": round(loss.item(), 4), **heldout_scores})
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            run.save(model, opt, step + 1, config.to_dict())


def reconstruct(tokenizer: VQGAN, images: Tensor) -> Tensor:
    """(N, 3, H, W) -> the tokenizer's reconstructions, on the CPU."""
    with torch.no_grad():
        return torch.cat([tokenizer.decode(tokenizer.encode(b)) for b in images.split(256)])


def export(args: argparse.Namespace) -> None:
    """Writes fp16 safetensors, config and classes in the metadata: the bundled tokenizer and
    generator into --out, the classifier to --classifier-out."""
    data = load_or_build(args.data)
    classes = {"class_names": list(data.class_names)}
    # The app shows each class as its emoji and tells a group name from a class name.
    annotated = {
        **classes,
        "class_glyphs": list(data.class_emoji),
        "class_groups": list(data.class_groups),
    }
    files = []
    if args.tokenizer:
        files.append(args.out / "tokenizer.safetensors")
        hub.save_bundled(tokenizer_from_run(args.tokenizer), files[-1])
    for run, network, config_cls, path, metadata in (
        (args.generator, RAR, RARConfig, args.out / "generator.safetensors", annotated),
        (args.classifier, EmojiClassifier, ClassifierConfig, args.classifier_out, classes),
    ):
        if run:
            config, weights = load_checkpoint(run)
            model = network(config_cls.from_dict(config))
            model.load_state_dict(weights)
            hub.save_bundled(model, path, **metadata)
            files.append(path)
    if not files:
        raise SystemExit("nothing to export: give --tokenizer, --generator or --classifier")
    print(json.dumps({"exported": {str(p): p.stat().st_size for p in files}}))


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rar_demo.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="what", required=True)
    stages = (
        ("tokenizer", 3000, 1e-3, 32),
        ("decoder", 600, 5e-4, 8),
        ("generator", 3000, 1e-3, 64),
        ("classifier", 3000, 2e-3, 128),
    )
    for name, steps, lr, batch in stages:
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--preset", default="emoji" if name == "classifier" else "bundled")
        p.add_argument("--data", type=Path, default=CACHE_PATH)
        p.add_argument("--steps", type=int, default=steps)
        p.add_argument("--batch-size", type=int, default=batch)
        p.add_argument("--lr", type=float, default=lr)
        p.add_argument("--warmup", type=int, default=100)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--log-every", type=int, default=50)
        p.add_argument("--save-every", type=int, default=250)
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
        if name == "tokenizer":
            p.add_argument("--restart-every", type=int, default=200)
            p.add_argument("--crop", type=int, default=32)
            p.add_argument(
                "--init", type=Path, help="start from a tokenizer run folder or exported weights"
            )
        else:
            p.add_argument(
                "--tokenizer",
                type=Path,
                required=name != "classifier",
                help="a tokenizer run folder or exported tokenizer.safetensors"
                + (" (also train on its reconstructions)" if name == "classifier" else ""),
            )
        if name == "generator":
            p.add_argument("--init", type=Path, help="start from exported generator weights")
            p.add_argument(
                "--layers",
                type=int,
                help="depth, if not the preset's; with --init, new layers start as identity",
            )
            p.add_argument("--width", type=int, help="hidden size, if not the preset's")
            p.add_argument("--balanced", action="store_true", help="draw every class equally often")
            p.add_argument(
                "--final-random-ratio",
                type=_unit_interval,
                default=0.0,
                help="share of random orders the anneal ends at (the paper: 0, raster only)",
            )
            p.add_argument(
                "--bf16",
                action="store_true",
                help="compute in bfloat16 autocast (weights and optimizer stay fp32): about 1.6x "
                "faster a step on a CPU with AMX",
            )
    p = sub.add_parser("export", help="write trained runs into assets/ (any of the three)")
    p.add_argument("--tokenizer", type=Path)
    p.add_argument("--generator", type=Path)
    p.add_argument("--classifier", type=Path)
    p.add_argument("--data", type=Path, default=CACHE_PATH)
    p.add_argument("--out", type=Path, default=BUNDLED_DIR)
    p.add_argument("--classifier-out", type=Path, default=CLASSIFIER_PATH)
    args = parser.parse_args(argv)
    torch.set_float32_matmul_precision("high")
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    stage = {
        "tokenizer": train_tokenizer,
        "decoder": train_decoder,
        "generator": train_generator,
        "classifier": train_classifier,
        "export": export,
    }
    stage[args.what](args)


if __name__ == "__main__":
    main()
