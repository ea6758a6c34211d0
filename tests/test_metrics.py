"""Quality measures: PSNR and the teacher-forced NLL in either order."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_RAR

from rar_demo.metrics import heldout_nll, nll_per_token, psnr
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
