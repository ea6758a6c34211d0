"""The emoji identity classifier: its network, augmentation, and weights on disk."""

from __future__ import annotations

import pytest
import torch

from rar_demo.classifier import EmojiClassifier, augment, load_classifier
from rar_demo.config import CLASSIFIER_PRESETS, ClassifierConfig
from rar_demo.hub import save_bundled

TINY = ClassifierConfig(widths=(8, 16), resolution=16, num_classes=5)


def test_logits_per_class_at_every_preset_resolution() -> None:
    for config in (TINY, CLASSIFIER_PRESETS["emoji"]):
        model = EmojiClassifier(config).eval()
        images = torch.rand(2, 3, config.resolution, config.resolution)
        assert model(images).shape == (2, config.num_classes)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"widths": ()}, "widths"),
        ({"widths": (8, 0)}, "widths"),
        ({"num_classes": 0}, "num_classes"),
        ({"resolution": 20, "widths": (8, 16, 32)}, "divisible"),
    ],
)
def test_bad_configs_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClassifierConfig(**{"widths": (8, 16), "resolution": 16, **change})


def test_augment_moves_the_picture_on_white_but_keeps_its_side_and_hue() -> None:
    images = torch.ones(64, 3, 32, 32)
    images[:, 0, 8:24, 2:14] = 0.0  # a cyan block on the left: no red there, white around it
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1
    assert not torch.equal(out, augment(images, torch.Generator().manual_seed(1)))
    assert torch.equal(out, augment(images, torch.Generator().manual_seed(0)))
    ink = 1 - out[:, 0]  # (B, H, W) where the red channel is missing
    left, right = ink[..., :16].sum(dim=(1, 2)), ink[..., 16:].sum(dim=(1, 2))
    assert (left > right).all()  # never mirrored
    # Green and blue stay above red inside the block: a shift in brightness, not in hue.
    centre = out[:, :, 14:18, 6:10].mean(dim=(2, 3))  # (B, 3)
    assert (centre[:, 1:] > centre[:, :1] + 0.3).all()
    corners = out[:, :, :2, -2:].mean()
    assert corners > 0.75  # the border is filled with white, not black


def test_weights_round_trip_with_their_classes(tmp_path) -> None:
    torch.manual_seed(0)
    model = EmojiClassifier(TINY)
    model.train()(torch.rand(4, 3, 16, 16))  # batch-norm statistics and counters move
    model.eval()
    path = tmp_path / "classifier.safetensors"
    names = [f"class {i}" for i in range(TINY.num_classes)]
    save_bundled(model, path, class_names=names)
    loaded, classes = load_classifier(path)
    assert classes == tuple(names) and loaded.config == TINY
    counter = loaded.features[0][1].num_batches_tracked
    assert counter.dtype == torch.long and counter.item() == 1
    images = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(loaded(images), model(images), atol=2e-2, rtol=0)  # fp16 file


def test_the_shipped_classifier_knows_every_emoji_class() -> None:
    model, classes = load_classifier()  # assets/eval/classifier.safetensors
    assert len(classes) == model.config.num_classes == len(set(classes)) > 1800
    assert {"fox", "cat face", "red heart", "flag: France"} <= set(classes)
    pixels = torch.ones(2, 3, model.config.resolution, model.config.resolution)
    assert model(pixels).shape == (2, len(classes))
