"""Every model the studio runs, one entry each: its networks, where their weights come from,
its classes, its sampling defaults, where it may run and its one-click examples.

Code asks `spec(name)` instead of branching on a model's name, so adding a model is one entry
in `MODELS`. Network shapes stay in config.py's presets; an entry says which preset it uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from .config import RAR_PRESETS, VQGAN_PRESETS, RARConfig, SamplingConfig, VQGANConfig
from .orders import ORDER_NAMES

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_DIR = ASSETS / "bundled"
IMAGENET_CLASSES = ASSETS / "imagenet_classes.json"

# What runs a model, by the name the app and API use: (backend, int8 weights).
RUNTIMES: dict[str, tuple[str, bool]] = {
    "torch": ("torch", False),
    "onnx": ("onnx", False),
    "onnx int8": ("onnx", True),
}


@dataclass(frozen=True)
class HubFile:
    """A checkpoint file on the Hugging Face Hub."""

    repo_id: str
    filename: str

    def how_to_get(self) -> str:
        return (
            f"download it with `hf download {self.repo_id} {self.filename}` on a machine "
            "with network access (it lands in the Hugging Face cache), or pass its local path"
        )


@dataclass(frozen=True)
class Example:
    """A one-click preset of the app: a class, the orders to compare, a seed, and the sampler
    step counts each order is shown at."""

    class_name: str
    orders: tuple[str, ...]
    seed: int
    steps: tuple[int, ...] = (256,)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    about: str  # one line for people: size, quality, data
    generator: RARConfig
    tokenizer: VQGANConfig
    # A Hub file, or a bundled fp16 safetensors file whose metadata holds its config (and, for
    # the generator, its class names).
    generator_weights: HubFile | Path
    tokenizer_weights: HubFile | Path
    classes: Path | None  # a JSON list of class names; None: the generator file's metadata
    sampling: SamplingConfig  # the defaults of the UI, CLI and API
    gpu_dtype: torch.dtype  # the generator's weights on a GPU (CPUs run fp32)
    runtimes: tuple[str, ...]  # keys of RUNTIMES this model may run on
    # The fastest of them on a CPU, measured on AVX-512 and AVX2 machines alike (README,
    # Benchmarks): what the app runs unless told otherwise. A GPU runs torch (CUDA graphs).
    cpu_runtime: str
    examples: tuple[Example, ...]
    runtime_note: str = ""  # why a runtime is not offered

    def __post_init__(self) -> None:
        if unknown := set(self.runtimes) - set(RUNTIMES):
            raise ValueError(f"{self.name}: unknown runtimes {sorted(unknown)}")
        if self.cpu_runtime not in self.runtimes:
            raise ValueError(f"{self.name}: cpu_runtime {self.cpu_runtime!r} is not offered")
        if self.generator.codebook_size != self.tokenizer.codebook_size:
            raise ValueError(f"{self.name}: generator and tokenizer codebooks differ")
        if self.generator.grid_size != self.tokenizer.grid_size:
            raise ValueError(f"{self.name}: generator and tokenizer grids differ")
        for example in self.examples:
            if bad := set(example.orders) - set(ORDER_NAMES):
                raise ValueError(f"{self.name}: example with unknown orders {sorted(bad)}")
            steps = example.steps
            if len(set(steps)) < len(steps) or not all(
                1 <= n <= self.generator.image_seq_len for n in steps
            ):
                raise ValueError(f"{self.name}: example with bad steps {steps}")

    def dtype(self, device: str | torch.device) -> torch.dtype:
        return self.gpu_dtype if torch.device(device).type == "cuda" else torch.float32

    def check_runtime(self, runtime: str) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        if runtime not in self.runtimes:
            why = f": {self.runtime_note}" if self.runtime_note else ""
            raise ValueError(f"{self.name} does not run on {runtime!r}{why}")


def _official(
    name: str, about: str, sampling: SamplingConfig, examples: tuple[Example, ...]
) -> ModelSpec:
    return ModelSpec(
        name=name,
        about=about,
        generator=RAR_PRESETS[name],
        tokenizer=VQGAN_PRESETS["maskgit_vqgan_f16_256"],
        generator_weights=HubFile("yucornetto/RAR", f"{name}.bin"),
        tokenizer_weights=HubFile("fun-research/TiTok", "maskgit-vqgan-imagenet-f16-256.bin"),
        classes=IMAGENET_CLASSES,
        sampling=sampling,
        # Half the bytes a step reads; on a GPU the speed targets assume it.
        gpu_dtype=torch.bfloat16,
        runtimes=tuple(RUNTIMES),
        # RAR-B, 256 steps: 5.0 s against torch's 10.7 (Intel, AVX-512 VNNI); 8.5 s against
        # 25.8 in bf16 and 32.0 in fp32 (AMD, AVX2).
        cpu_runtime="onnx int8",
        examples=examples,
    )


_IMAGENET_EXAMPLES = (
    Example("golden retriever", ("raster", "random"), 0),
    Example("volcano", ("raster", "random"), 1),
    Example("macaw", ("spiral", "center-out", "checkerboard", "random"), 2),
    # Parallel decoding: random order keeps its picture at 64 steps, raster order does not.
    Example("golden retriever", ("random", "raster"), 0, (256, 64)),
)

# Sampling: the paper's settings (RAR README / paper Table 7).
_ENTRIES = (
    ModelSpec(
        name="bundled",
        about="ours: 7.5M parameters + 1.7M tokenizer, trained on emoji (offline)",
        generator=RAR_PRESETS["bundled"],
        tokenizer=VQGAN_PRESETS["bundled"],
        generator_weights=BUNDLED_DIR / "generator.safetensors",
        tokenizer_weights=BUNDLED_DIR / "tokenizer.safetensors",
        classes=None,
        # Chosen on 8 seeds x 9 classes x 2 orders against CFG 2/3/5 and temperature 0.6:
        # stronger guidance speckles this small model's images (MODEL_CARD.md).
        sampling=SamplingConfig(temperature=0.8, guidance_scale=1.5, guidance_power=1.0),
        gpu_dtype=torch.float32,  # tiny: bf16 would only cost accuracy
        # Measured: int8 keeps 92% of the next-token argmaxes, but a different token early on
        # changes the whole sample.
        runtimes=("torch", "onnx"),
        runtime_note="int8 changes the bundled model's pictures; it runs fast in fp32",
        # 4 panels, 256 steps: 1.19 s against torch's 1.62 at one thread (Intel, AVX-512);
        # 3.50 s against 5.61 at one thread and 3.38 against 4.89 at two (AMD, AVX2). The
        # app samples with one thread fewer than the cores. Its export takes ~11 s, once.
        cpu_runtime="onnx",
        examples=(
            # Raster is clear for every class; the others only for a few (MODEL_CARD.md).
            Example("Animals & Nature", ("raster", "random"), 2),
            Example("Food & Drink", ("raster", "checkerboard"), 0),
            Example("Smileys & Emotion", ("raster", "random"), 0),
            Example("Flags", ("raster", "spiral", "center-out", "random"), 2),
            Example("Flags", ("random", "raster"), 2, (256, 32)),
        ),
    ),
    _official(
        "rar_b",
        "RAR-B: 261M parameters, FID 1.95 (ImageNet 256)",
        SamplingConfig(temperature=1.0, guidance_scale=16.0, guidance_power=2.75),
        _IMAGENET_EXAMPLES,
    ),
    _official(
        "rar_l",
        "RAR-L: 461M parameters, FID 1.70 (ImageNet 256)",
        SamplingConfig(temperature=1.02, guidance_scale=15.5, guidance_power=2.5),
        _IMAGENET_EXAMPLES,
    ),
    _official(
        "rar_xl",
        "RAR-XL: 955M parameters, FID 1.50 (ImageNet 256)",
        SamplingConfig(temperature=1.02, guidance_scale=6.9, guidance_power=1.5),
        _IMAGENET_EXAMPLES,
    ),
    _official(
        "rar_xxl",
        "RAR-XXL: 1.5B parameters, FID 1.48 (ImageNet 256)",
        SamplingConfig(temperature=1.02, guidance_scale=8.0, guidance_power=1.2),
        _IMAGENET_EXAMPLES,
    ),
)
MODELS: dict[str, ModelSpec] = {entry.name: entry for entry in _ENTRIES}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def spec(name: str) -> ModelSpec:
    """The registry entry of `name`; the one place an unknown model is refused."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        choices = ", ".join(MODEL_NAMES)
        raise ValueError(f"unknown model {name!r}; choose one of {choices}") from None


@cache
def imagenet_classes(path: Path = IMAGENET_CLASSES) -> tuple[str, ...]:
    return tuple(json.loads(path.read_text()))
