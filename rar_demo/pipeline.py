"""A generator, its tokenizer and its classes, ready to stream images in any orders."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .backends import BACKENDS, Executor, TorchExecutor
from .backends.graphs import GraphExecutor
from .config import SamplingConfig
from .hub import class_table, load_generator, load_tokenizer
from .model import RAR
from .orders import kept_first, make_order
from .registry import ModelSpec, spec
from .sampler import Seeds, StepEvent, stream
from .vqgan import VQGAN, tokenize


def class_label(name: str, glyph: str | None = None) -> str:
    """A class as pickers and lists show it: its emoji, if it has one, then its name."""
    return f"{glyph} {name}" if glyph else name


@dataclass
class Pipeline:
    spec: ModelSpec  # the registry's facts about this model
    generator: RAR
    tokenizer: VQGAN
    class_names: tuple[str, ...]
    # What samples and decodes: by default the torch modules above (fast path; on a GPU
    # replayed from CUDA graphs), or their ONNX export run by ONNX Runtime (see load_pipeline).
    executor: Executor | None = None
    decoder: Callable[[Tensor], Tensor] | None = None  # (B, N) codes -> (B, 3, H, W) pixels
    # Per class, where the weights name them (the bundled emoji model): its emoji and group.
    class_glyphs: tuple[str, ...] = ()
    class_groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.executor = self.executor or torch_executor(self.generator)
        self.decoder = self.decoder or self.tokenizer.decode

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def sampling(self) -> SamplingConfig:
        """The model's defaults (the paper's, for the official models)."""
        return self.spec.sampling

    @property
    def device(self) -> torch.device:
        return self.executor.device

    @property
    def num_steps(self) -> int:
        return self.generator.config.image_seq_len

    @property
    def grid(self) -> tuple[int, int]:
        side = self.generator.config.grid_size
        return side, side

    def class_label(self, class_id: int) -> str:
        """How the class is shown: "🦊 fox" where the weights name its emoji, else its name."""
        glyph = self.class_glyphs[class_id] if self.class_glyphs else None
        return class_label(self.class_names[class_id], glyph)

    def class_choices(self) -> list[tuple[str, str]]:
        """(label, name) per class, for a searchable picker whose value is the class name."""
        return [(self.class_label(i), name) for i, name in enumerate(self.class_names)]

    def class_id(self, query: str | int) -> int:
        """A class by id ("207", 207), by name or label ("fox", "🦊 fox"), or by its emoji,
        case-insensitive: exact, then the unique class whose comma-separated synonyms include
        it, then a unique substring match. Anything else: a ValueError that says what to try."""
        n = len(self.class_names)
        if isinstance(query, int) or str(query).strip().isdigit():
            idx = int(query)
            if not 0 <= idx < n:
                raise ValueError(f"class id {idx} is out of range: {self.name} has 0-{n - 1}")
            return idx
        text = str(query).strip().lower()
        if not text:
            raise ValueError("no class given")
        if text in self.class_glyphs:
            return self.class_glyphs.index(text)
        names = [c.lower() for c in self.class_names]
        labels = [self.class_label(i).lower() for i in range(n)]
        exact = [i for i in range(n) if text in (names[i], labels[i])]
        if len(exact) == 1:
            return exact[0]
        if not exact and text in (g.lower() for g in self.class_groups):
            raise ValueError(self._unknown_class(str(query).strip()))  # a group, not a class
        for match in (
            lambda i: i in exact,
            lambda i: text in (s.strip() for s in names[i].split(",")),
            lambda i: text in names[i],
        ):
            hits = [i for i in range(n) if match(i)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                shown = "; ".join(self.class_label(i) for i in hits[:5])
                more = f" and {len(hits) - 5} more" if len(hits) > 5 else ""
                raise ValueError(f"class {query!r} is ambiguous: {shown}{more}")
        raise ValueError(self._unknown_class(str(query).strip()))

    def _unknown_class(self, query: str) -> str:
        groups = {g.lower(): g for g in self.class_groups}
        if query.lower() in groups:
            group = groups[query.lower()]
            members = [i for i, g in enumerate(self.class_groups) if g == group]
            examples = ", ".join(repr(self.class_names[i]) for i in members[:3])
            return (
                f"{group!r} is a group of {len(members)} emoji, not one class: "
                f"pick one of them, e.g. {examples}"
            )
        close = difflib.get_close_matches(query.lower(), [c.lower() for c in self.class_names])
        hint = (
            f"did you mean {' or '.join(repr(c) for c in close)}?"
            if close
            else "list them with `python -m rar_demo classes`"
        )
        return f"unknown class {query!r} for {self.name}; {hint}"

    def orders(self, names: Sequence[str], seed: int) -> Tensor:
        """(B, L) orders, one row per name; "random" is drawn from `seed`."""
        if not names:
            raise ValueError("choose at least one generation order")
        return torch.stack([make_order(n, *self.grid, seed=seed) for n in names])

    def stream(
        self,
        class_id: int | Tensor,
        orders: Tensor,
        seed: Seeds,
        sampling: SamplingConfig | None = None,
        prompt: Tensor | None = None,
    ) -> Iterator[StepEvent]:
        """One panel per row of `orders` (see `orders()`), in one batch: one class id and
        seed for every panel, or a (B,) tensor of class ids and a seed per panel; with an
        edit's `prompt` (see `edit_inputs`) only the cells it leaves are generated."""
        labels = torch.as_tensor(class_id, dtype=torch.long).expand(len(orders))
        return stream(self.executor, labels, orders, sampling or self.sampling, seed, prompt)

    def encode(self, pixels: np.ndarray) -> Tensor:
        """(S, S, 3) uint8 at the model's resolution -> its (L,) tokens by raster position."""
        side = self.tokenizer.config.resolution
        if pixels.shape != (side, side, 3):
            raise ValueError(f"expected a {side}x{side} RGB picture, got shape {pixels.shape}")
        return tokenize(self.tokenizer, pixels[None])[0]

    def edit_orders(self, regenerate: Tensor, names: Sequence[str], seed: int) -> Tensor:
        """(B, L) orders for an edit: the cells where `regenerate` (h, w) is False first, then
        the others in each named order. Refuses an empty or full mask (no model work)."""
        if regenerate.shape != self.grid:
            raise ValueError(f"the mask must cover the {self.grid[1]}x{self.grid[0]} token grid")
        if not regenerate.any():
            raise ValueError("the mask is empty: paint the cells to regenerate or pick a preset")
        if regenerate.all():
            raise ValueError(
                "the mask covers the whole picture: nothing of it would be kept (use Generate)"
            )
        return kept_first(self.orders(names, seed), ~regenerate.flatten())

    def edit_prompt(self, pixels: np.ndarray, regenerate: Tensor, batch: int) -> Tensor:
        """(batch, L) prompt for `stream`: the picture's tokens where `regenerate` is False,
        -1 where it is True (runs the encoder, so on a GPU it belongs in the GPU call)."""
        keep = ~regenerate.flatten()
        return torch.where(keep, self.encode(pixels), -1).expand(batch, -1).clone()

    def edit_inputs(
        self, pixels: np.ndarray, regenerate: Tensor, names: Sequence[str], seed: int
    ) -> tuple[Tensor, Tensor]:
        """(orders, prompt) to `stream` an edit of `pixels` (see edit_orders, edit_prompt)."""
        orders = self.edit_orders(regenerate, names, seed)
        return orders, self.edit_prompt(pixels, regenerate, len(orders))

    @torch.inference_mode()
    def decode(self, canvas: Tensor) -> Tensor:
        """(B, L) tokens (-1 where unknown, drawn as token 0) -> (B, 3, H, W) in [0, 1], CPU."""
        codes = canvas.clamp_min(0).to(self.device)
        return self.decoder(codes).float().cpu()


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # by the name the CLI and bench use


def torch_executor(model: RAR, compile: bool = False) -> TorchExecutor:
    """The fast path; on a GPU, where a step is a few hundred tiny kernels and so bound by
    launch latency, each step is replayed from a CUDA graph. compile: also torch.compile the
    step (minutes of compiling first; not allowed on Hugging Face ZeroGPU)."""
    if compile or model.device.type == "cuda":
        return GraphExecutor(model, compile=compile)
    return TorchExecutor(model)


def load_pipeline(
    name: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    backend: str = "torch",
    int8: bool = False,
    weights: Path | str | None = None,
    tokenizer_weights: Path | str | None = None,
    compile: bool = False,
) -> Pipeline:
    """Model `name` ready to stream. `weights` / `tokenizer_weights`: local files instead of
    the Hub or the bundled ones. dtype None: the registry's for the device. compile: see
    `torch_executor`.

    backend "onnx" runs an fp32 (or, with int8, a quantized) ONNX export of the weights,
    exported on first use and cached; ONNX Runtime picks the device (CUDA where present)."""
    entry = spec(name)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if int8 and backend != "onnx":
        raise ValueError("int8 is offered with the onnx backend only")
    entry.check_runtime("onnx int8" if int8 else backend)
    if backend == "onnx":
        if dtype not in (None, torch.float32):
            raise ValueError("the onnx backend exports fp32 weights; use int8 to quantize")
        if compile:
            raise ValueError("compile applies to the torch backend")
        device, dtype = "cpu", torch.float32  # where the torch weights wait to be exported
    dtype = dtype or entry.dtype(device)
    generator, classes = load_generator(name, weights, device=device, dtype=dtype)
    # The torch decoder stays fp32 (the onnx int8 export quantizes it with calibrated ranges).
    tokenizer = load_tokenizer(name, tokenizer_weights, device=device)
    if backend == "onnx":
        from .backends.onnx import ensure_export, open_export

        directory = ensure_export(name, generator, tokenizer, int8=int8)
        executor, decoder = open_export(directory, int8)
    else:
        executor, decoder = torch_executor(generator, compile), None
    _, glyphs, groups = class_table(name, weights)
    return Pipeline(entry, generator, tokenizer, classes, executor, decoder, glyphs, groups)
