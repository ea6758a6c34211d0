"""Quality measures: PSNR, the teacher-forced NLL in either order, classifier recognition."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_RAR

from rar_demo.classifier import EmojiClassifier
from rar_demo.config import ClassifierConfig
from rar_demo.metrics import heldout_nll, nll_per_token, psnr, recognition
from rar_demo.model import RAR
from rar_demo.train import rar_loss


def test_psnr_per_image() -> None:
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01: 20 dB
    b[1] += 0.5  # MSE 0.25: about 6.02 dB
    assert psnr(a, b).tolist() == pytest.approx([20.0, -10 * math.log10(0.25)], rel=1e-5)
    assert psnr(a, a).tolist() == pytest.approx([100.0, 100.0])  # capped, not infinite


def test_heldout_nll_is_the_mean_cross_entropy_in_either_order() -> None:
    torch.manual_seed(0)
    model = RAR(TINY_RAR)
    tokens = torch.randint(0, TINY_RAR.codebook_size, (5, 16))
    labels = torch.randint(0, TINY_RAR.condition_num_classes, (5,))
    raster = nll_per_token(model, tokens, labels, random=False)
    expected = rar_loss(model, tokens, labels, torch.arange(16).expand(5, -1)).item()
    assert raster == pytest.approx(expected, rel=1e-5)
    random = nll_per_token(model, tokens, labels, random=True)
    assert random == nll_per_token(model, tokens, labels, random=True)  # seeded orders
    assert random != raster
    both = heldout_nll(model, tokens, labels)
    assert both == {
        "heldout_nll_raster": round(raster, 4),
        "heldout_nll_random": round(random, 4),
    }


class FixedLogits(torch.nn.Module):
    """A classifier whose answer is known: image i gets logits[i]."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits[images[:, 0, 0, 0].long()]  # the image's first pixel is its index


def test_recognition_counts_top1_and_top5() -> None:
    # Ten classes ranked 9, 8, ..., 0 for every image: class 9 is top-1, classes 9-5 are top-5.
    logits = torch.arange(10.0).flip(0).repeat(4, 1)
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    labels = torch.tensor([0, 9, 5, 4])  # ranked 10th, 1st, 5th, 6th
    scores = recognition(FixedLogits(logits), images, labels, batch_size=3)
    assert scores == {"top1": 0.25, "top5": 0.5}


def test_recognition_of_groups_counts_a_guess_of_any_class_in_the_group() -> None:
    """Ten classes in two groups (0-4 -> 0, 5-9 -> 1), class 9 ranked first, then 8, ...: every
    top-1 guess is group 1, and the top-5 (9-5) are group 1 too."""
    logits = torch.arange(10.0).repeat(3, 1)
    images = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    groups = torch.tensor([0] * 5 + [1] * 5)
    scores = recognition(FixedLogits(logits), images, torch.tensor([1, 0, 1]), class_map=groups)
    assert scores == {"top1": 0.6667, "top5": 0.6667}


def test_recognition_of_a_tiny_trained_classifier() -> None:
    """A tiny EmojiClassifier learns four solid colours: it names them all, and scoring the
    same images under wrong labels gives 0 (top-5 of 4 classes is every class)."""
    torch.manual_seed(0)
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]])
    images = colours[:, :, None, None].expand(4, 3, 16, 16).repeat(3, 1, 1, 1)
    labels = torch.arange(4).repeat(3)
    model = EmojiClassifier(ClassifierConfig(widths=(8, 16), resolution=16, num_classes=4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert recognition(model, images, labels) == {"top1": 1.0, "top5": 1.0}
    assert recognition(model, images, (labels + 1) % 4)["top1"] == 0.0
