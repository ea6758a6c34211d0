"""Quality measures of the bundled model's networks, shared by training logs and evaluation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import RAR
from .orders import sample_orders


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB for pixels in [0, 1]."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


@torch.inference_mode()
def nll_per_token(model: RAR, tokens: Tensor, labels: Tensor, random: bool, seed: int = 0) -> float:
    """Teacher-forced negative log-likelihood per token (nats), in raster or random orders."""
    L = tokens.shape[1]
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for x, y in zip(tokens.split(128), labels.split(128), strict=True):
        orders = sample_orders(len(x), L, float(random), gen)
        x, y, orders = (t.to(model.device) for t in (x, y, orders))
        logits = model(x, y, orders)[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1), x.gather(1, orders).flatten(), reduction="sum")
        total += loss.item()
    return total / tokens.numel()


def heldout_nll(model: RAR, tokens: Tensor, labels: Tensor) -> dict[str, float]:
    """`nll_per_token` in raster and in random orders, as log and metrics fields."""
    return {
        f"heldout_nll_{name}": round(nll_per_token(model, tokens, labels, random), 4)
        for name, random in (("raster", False), ("random", True))
    }


@torch.inference_mode()
def recognition(
    classifier: torch.nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 256,
    class_map: Tensor | None = None,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy of `classifier` on (N, 3, H, W) images of classes `labels`;
    with `class_map` (the classifier's class -> a label) the labels are coarser classes, such
    as the emoji groups, and a guess counts where its class maps to the label."""
    logits = torch.cat([classifier(b) for b in images.split(batch_size)])
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (N, 5)
    if class_map is not None:
        top = class_map.to(top.device)[top]
    hits = top == labels[:, None].to(top.device)
    return {
        "top1": round(hits[:, 0].float().mean().item(), 4),
        "top5": round(hits.any(dim=1).float().mean().item(), 4),
    }
