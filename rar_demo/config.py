"""Configs for the networks (with named presets) and for the sampler.

Which model uses which preset, and its sampling defaults, is the registry's (registry.py).

Field names follow the official checkpoints' configs so a config dict from a checkpoint or a
parity fixture maps onto a dataclass one to one (`from_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Self


def _require_positive_ints(config: object, names: Iterable[str]) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(
                f"{type(config).__name__}.{name} must be a positive int, got {value!r}"
            )


def _pick(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class RARConfig:
    """The RAR generator: a decoder-only transformer with adaLN class conditioning."""

    hidden_size: int = 768
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 3072
    codebook_size: int = 1024
    image_seq_len: int = 256
    condition_num_classes: int = 1000

    def __post_init__(self) -> None:
        _require_positive_ints(self, (f.name for f in fields(self)))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if math.isqrt(self.image_seq_len) ** 2 != self.image_seq_len:
            raise ValueError(f"image_seq_len {self.image_seq_len} is not a square grid")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls(**_pick(cls, data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.image_seq_len)

    @property
    def null_class(self) -> int:
        """Label of the unconditional (dropped) class used by classifier-free guidance."""
        return self.condition_num_classes

    @property
    def vocab_size(self) -> int:
        # [0, V) image tokens, V mask token, V+1+c class c, V+1+C null class.
        return self.codebook_size + 1 + self.condition_num_classes + 1


@dataclass(frozen=True)
class VQGANConfig:
    """The MaskGIT-VQGAN tokenizer (no attention layers)."""

    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    hidden_channels: int = 128
    num_channels: int = 3
    num_res_blocks: int = 2
    resolution: int = 256
    z_channels: int = 256
    codebook_size: int = 1024
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        if not self.channel_mult or any(
            not isinstance(m, int) or m <= 0 for m in self.channel_mult
        ):
            raise ValueError(f"channel_mult must be positive ints, got {self.channel_mult}")
        _require_positive_ints(
            self,
            (
                "hidden_channels",
                "num_channels",
                "num_res_blocks",
                "resolution",
                "z_channels",
                "codebook_size",
            ),
        )
        # GroupNorm(32) runs on every feature map, including the encoder's conv_in output
        # (hidden_channels wide, i.e. multiplier 1) that the first down block normalises.
        for m in (1, *self.channel_mult):
            if (self.hidden_channels * m) % 32:
                raise ValueError(
                    f"hidden_channels * channel_mult ({self.hidden_channels} * {m}) "
                    "must be divisible by 32"
                )
        if self.resolution % self.downsample_factor:
            raise ValueError(
                f"resolution {self.resolution} is not divisible by {self.downsample_factor}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        config = cls(**_pick(cls, data))
        if data.get("num_resolutions", config.num_resolutions) != config.num_resolutions:
            raise ValueError("num_resolutions must equal len(channel_mult)")
        return config

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "channel_mult": list(self.channel_mult)}

    @property
    def num_resolutions(self) -> int:
        return len(self.channel_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self.num_resolutions - 1)

    @property
    def grid_size(self) -> int:
        return self.resolution // self.downsample_factor


@dataclass(frozen=True)
class ClassifierConfig:
    """The emoji identity classifier that scores generated samples (evaluate.py): a small
    ResNet, one stage per width, each halving the image."""

    widths: tuple[int, ...] = (16, 32, 64, 128)
    blocks_per_stage: int = 1
    resolution: int = 64
    num_classes: int = 1870

    def __post_init__(self) -> None:
        if not self.widths or any(not isinstance(w, int) or w <= 0 for w in self.widths):
            raise ValueError(f"widths must be positive ints, got {self.widths}")
        _require_positive_ints(self, ("blocks_per_stage", "resolution", "num_classes"))
        if self.resolution % 2 ** len(self.widths):
            raise ValueError(
                f"resolution {self.resolution} is not divisible by 2^{len(self.widths)}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        picked = _pick(cls, data)
        return cls(**{**picked, "widths": tuple(picked.get("widths", cls.widths))})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "widths": list(self.widths)}


SCHEDULES: tuple[str, ...] = ("constant", "cosine")  # tokens per step, see sampler


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick each token. guidance_scale 0 disables classifier-free guidance."""

    temperature: float = 1.0
    guidance_scale: float = 0.0
    guidance_power: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    steps: int | None = None  # sampler steps; None: one per token. Fewer: several per step
    schedule: str = "constant"  # how many tokens each step takes: one of SCHEDULES

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not self.guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if not self.guidance_power >= 0:
            raise ValueError(f"guidance_power must be >= 0, got {self.guidance_power}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be a positive whole number or None, got {self.steps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}"
            )

    def with_(self, **changes: Any) -> SamplingConfig:
        return replace(self, **changes)


_OFFICIAL = dict(
    num_attention_heads=16, codebook_size=1024, image_seq_len=256, condition_num_classes=1000
)

RAR_PRESETS: dict[str, RARConfig] = {
    "rar_b": RARConfig(hidden_size=768, num_hidden_layers=24, intermediate_size=3072, **_OFFICIAL),
    "rar_l": RARConfig(hidden_size=1024, num_hidden_layers=24, intermediate_size=4096, **_OFFICIAL),
    "rar_xl": RARConfig(
        hidden_size=1280, num_hidden_layers=32, intermediate_size=5120, **_OFFICIAL
    ),
    "rar_xxl": RARConfig(
        hidden_size=1408, num_hidden_layers=40, intermediate_size=6144, **_OFFICIAL
    ),
    # Our offline model: same 16x16 grid, 9 emoji classes, 512 codes; small enough to run
    # fast on a CPU and to ship in the repository.
    "bundled": RARConfig(
        hidden_size=192,
        num_hidden_layers=10,
        num_attention_heads=6,
        intermediate_size=768,
        codebook_size=512,
        image_seq_len=256,
        condition_num_classes=9,
    ),
}

VQGAN_PRESETS: dict[str, VQGANConfig] = {
    "maskgit_vqgan_f16_256": VQGANConfig(),
    # 64x64 emoji -> 16x16 tokens (f4), so the bundled model shares the real models' grid.
    "bundled": VQGANConfig(
        channel_mult=(1, 1, 2),
        hidden_channels=64,
        num_res_blocks=1,
        resolution=64,
        z_channels=32,
        codebook_size=512,
    ),
}

CLASSIFIER_PRESETS: dict[str, ClassifierConfig] = {"emoji": ClassifierConfig()}
