"""The bundled model's evaluation (`python -m rar_demo.evaluate`)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from conftest import random_emoji_data
from PIL import Image

from rar_demo.classifier import EmojiClassifier
from rar_demo.config import VQGAN_PRESETS, ClassifierConfig
from rar_demo.data import EmojiClass
from rar_demo.evaluate import (
    ORDERS,
    STEP_COUNTS,
    compare_int8,
    draw,
    main,
    recognition_by_order,
    sample_sheet,
    spread_classes,
)
from rar_demo.hub import save_bundled
from rar_demo.model import RAR
from rar_demo.pipeline import load_pipeline
from rar_demo.train import generator_config
from rar_demo.vqgan import VQGAN

GROUPS = ("a",) * 50 + ("b",) * 30 + ("c",) * 3 + ("d",) * 1


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("bundled")


def test_classes_are_spread_over_every_group_in_proportion() -> None:
    picked = spread_classes(GROUPS, 42)
    per_group = Counter(GROUPS[i] for i in picked)
    assert per_group == {"a": 25, "b": 15, "c": 2, "d": 1}  # at least 2, where a group has 2
    assert picked == sorted(set(picked)) == spread_classes(GROUPS, 42)
    assert picked[:3] == [0, 2, 4]  # evenly spaced within the group
    assert Counter(GROUPS[i] for i in spread_classes(GROUPS, 0)) == {"a": 2, "b": 2, "c": 2, "d": 1}


def test_samples_are_drawn_per_class_and_order_in_batches(pipe) -> None:
    ids, orders = [0, 1, 0], ["raster", "random", "spiral"]
    images = draw(pipe, ids, orders, seed=3, batch_size=2)
    side = pipe.tokenizer.config.resolution
    assert images.shape == (3, 3, side, side)
    torch.testing.assert_close(images, draw(pipe, ids, orders, seed=3, batch_size=2))
    with pytest.raises(ValueError, match="one order name"):
        draw(pipe, ids, orders[:2], seed=0)
    # Seeds per sample, batched: each (class, seed) as drawn with that seed alone.
    mixed = draw(pipe, [0, 1, 0], ["raster", "random", "spiral"], [3, 5, 3], batch_size=3)
    torch.testing.assert_close(mixed[[0, 2]], images[[0, 2]], atol=1e-5, rtol=0)
    single = draw(pipe, [1], ["random"], 5)
    torch.testing.assert_close(mixed[1:2], single, atol=1e-5, rtol=0)
    fast = pipe.sampling.with_(steps=16, schedule="cosine")
    assert not torch.equal(draw(pipe, ids, orders, seed=3, sampling=fast), images)


class AlwaysClassZero(torch.nn.Module):
    """Ranks class 0 first, then 1, 2, ...: whatever it is shown."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.logits = -torch.arange(float(classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(images), -1)


def test_recognition_is_scored_in_every_order(pipe) -> None:
    classifier = AlwaysClassZero(len(pipe.class_names))
    scores = recognition_by_order(pipe, classifier, [0, 1, 7])
    assert tuple(scores) == ORDERS
    # Class 0 is top-1 and classes 0-4 top-5 for every sample: 1 of 3, then 2 of 3.
    assert all(s == {"top1": 0.3333, "top5": 0.6667} for s in scores.values())


def test_the_sample_sheet_has_a_row_per_class_and_a_panel_per_order_and_seed(pipe) -> None:
    groups = ("x",) * 3 + ("y",) * (len(pipe.class_names) - 3)
    image = sample_sheet(pipe, groups, seeds=1)
    side = 2 * pipe.tokenizer.config.resolution
    assert image.width > len(ORDERS) * side and image.height > 4 * side  # 2 groups x 2 classes


def test_int8_comparison_on_the_bundled_model(pipe, tmp_path, monkeypatch) -> None:
    """`evaluate --int8` on one class: the int8 decoder (ranges calibrated on random codes)
    keeps the picture; the int8 generator's greedy tokens are compared with fp32's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    metrics = compare_int8(pipe, tmp_path, [0])
    assert metrics["int8_decoder_psnr_db"] > 35  # measured about 39 over all classes
    assert 0 < metrics["int8_greedy_token_agreement"] <= 1
    assert Image.open(tmp_path / "int8.png").size[0] > 4 * pipe.tokenizer.config.resolution


def test_evaluate_writes_every_metric_and_the_sheet_for_candidate_weights(tmp_path) -> None:
    """`python -m rar_demo.evaluate --weights ... --tokenizer-weights ...` end to end, on a
    tiny dataset with random weights at the bundled model's sizes."""
    classes = tuple(
        EmojiClass(chr(0x1F600 + i), f"face {i}", "Smileys & Emotion" if i < 3 else "Flags", "x")
        for i in range(6)
    )
    random_emoji_data(classes, 24, 4, tmp_path / "data.npz")
    names = [c.name for c in classes]
    torch.manual_seed(0)
    generator = RAR(generator_config("bundled", len(classes), 512))
    save_bundled(generator, tmp_path / "generator.safetensors", class_names=names)
    save_bundled(VQGAN(VQGAN_PRESETS["bundled"]), tmp_path / "tokenizer.safetensors")
    classifier = EmojiClassifier(ClassifierConfig(widths=(8, 16), num_classes=len(classes)))
    save_bundled(classifier.eval(), tmp_path / "classifier.safetensors", class_names=names)
    out = tmp_path / "eval"
    args = ["--out", str(out), "--data", str(tmp_path / "data.npz"), "--classes", "0"]
    args += ["--classifier", str(tmp_path / "classifier.safetensors")]
    args += ["--weights", str(tmp_path / "generator.safetensors")]
    main([*args, "--tokenizer-weights", str(tmp_path / "tokenizer.safetensors")])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["tokenizer_heldout_psnr_db_per_set"]) == {"noto", "twemoji", "openmoji"}
    assert tuple(metrics["recognition"]) == ORDERS and metrics["recognition_classes"] == 4
    by_steps = metrics["recognition_by_steps"]
    assert list(by_steps) == [str(n) for n in STEP_COUNTS]
    assert all(set(scores) == {"raster", "random"} for scores in by_steps.values())
    assert 0 <= metrics["classifier_heldout_real"]["top1"] <= 1
    assert metrics["generator_heldout_nll_raster"] > 0 and metrics["bundled_bytes"] > 0
    assert Image.open(out / "samples.png").height > 4 * 128  # 2 groups x 2 classes
    assert metrics["recognition_of"] == "emoji"

    # Weights conditioned on the groups (as the first bundled model): scored by group.
    groups = ["Smileys & Emotion", "Flags"]
    save_bundled(
        RAR(generator_config("bundled", 2, 512)),
        tmp_path / "groups.safetensors",
        class_names=groups,
    )
    args[args.index("--classes") + 1] = "4"
    main(
        [
            *args[:-1],
            str(tmp_path / "groups.safetensors"),
            "--out",
            str(tmp_path / "by-group"),
            "--tokenizer-weights",
            str(tmp_path / "tokenizer.safetensors"),
        ]
    )
    metrics = json.loads((tmp_path / "by-group" / "metrics.json").read_text())
    assert metrics["recognition_of"] == "group" and metrics["recognition_classes"] == 2
    assert metrics["recognition_samples_per_class"] == 2
    assert tuple(metrics["recognition"]) == ORDERS and metrics["generator_heldout_nll_raster"] > 0
