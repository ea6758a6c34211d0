"""The emoji identity classifier: which emoji a picture shows, out of the bundled model's
classes. evaluate.py scores generated samples with it, as ImageNet generators are scored with
a pretrained Inception network; train.py trains it (`train classifier`) on the three artwork
sets, augmented so that it recognises an emoji drawn a little off, not just the training art.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ClassifierConfig
from .hub import materialize, read_weights
from .registry import ASSETS

CLASSIFIER_PATH = ASSETS / "eval" / "classifier.safetensors"


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(channels, channels),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class EmojiClassifier(nn.Module):
    """(B, 3, H, W) pixels in [0, 1] -> (B, num_classes) logits."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [_conv_bn(3, config.widths[0])]
        c_in = config.widths[0]
        for width in config.widths:  # each stage halves the image
            layers.append(_conv_bn(c_in, width, stride=2))
            layers.extend(_Residual(width) for _ in range(config.blocks_per_stage))
            c_in = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, config.num_classes)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.features(pixels * 2.0 - 1.0)  # (B, C, H / 2^S, W / 2^S)
        return self.head(x.mean(dim=(2, 3)))


def load_classifier(path: Path | str = CLASSIFIER_PATH) -> tuple[EmojiClassifier, tuple[str, ...]]:
    """The classifier saved by `train export --classifier`, and the class names it knows."""
    meta, state = read_weights(path)
    config = ClassifierConfig.from_dict(meta["config"])
    return materialize(EmojiClassifier, config, state), tuple(meta["class_names"])


def augment(images: Tensor, gen: torch.Generator) -> Tensor:
    """A random shift (up to 10% of the side), scale (0.8-1.2), brightness, contrast and
    saturation change and pixel noise per image, filling with white. No flips and no hue
    changes: a left arrow is not a right arrow, and a blue heart is not a red one."""
    B = len(images)

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(B, *shape, generator=gen).to(images.device)

    theta = torch.zeros(B, 2, 3, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / uniform(0.8, 1.2)
    theta[:, :, 2] = uniform(-0.2, 0.2, 2)  # in [-1, 1] image coordinates: 10% of the side
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Sampled as ink on paper (1 - image), so that outside the picture is white.
    x = 1.0 - F.grid_sample(1.0 - images, grid, padding_mode="zeros", align_corners=False)
    gray = x.mean(dim=1, keepdim=True)
    x = gray + (x - gray) * uniform(0.7, 1.3, 1, 1, 1)
    x = (x - 0.5) * uniform(0.8, 1.2, 1, 1, 1) + 0.5 + uniform(-0.1, 0.1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=gen).to(images.device)
    return (x + noise * uniform(0.0, 0.05, 1, 1, 1)).clamp(0.0, 1.0)
