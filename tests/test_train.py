"""The training recipe: schedules, order sampling, one step lowers the loss, run/resume/export."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TINY_RAR, random_emoji_data

from rar_demo import train as train_module
from rar_demo.classifier import load_classifier
from rar_demo.config import RAR_PRESETS, VQGANConfig
from rar_demo.data import EmojiClass
from rar_demo.hub import load_generator, load_tokenizer
from rar_demo.model import RAR
from rar_demo.orders import sample_orders
from rar_demo.train import (
    balanced_batches,
    cached_tokens,
    generator_config,
    group_class_map,
    grow,
    learning_rate,
    load_checkpoint,
    main,
    random_ratio,
    rar_loss,
    vq_forward,
)
from rar_demo.vqgan import VQGAN, tokenize


def test_random_ratio_schedule() -> None:
    # r = 1 for the first half, linear to 0 at three quarters, 0 after (official 125k/187.5k/250k).
    assert random_ratio(0, 1000) == 1.0
    assert random_ratio(500, 1000) == 1.0
    assert random_ratio(625, 1000) == pytest.approx(0.5)
    assert random_ratio(750, 1000) == 0.0
    assert random_ratio(999, 1000) == 0.0
    # an anneal that ends above raster keeps that share of random orders to the end
    assert random_ratio(500, 1000, final=0.4) == 1.0
    assert random_ratio(625, 1000, final=0.4) == pytest.approx(0.7)
    assert random_ratio(999, 1000, final=0.4) == pytest.approx(0.4)


@pytest.mark.parametrize("value", ["-0.1", "1.5", "half"])
def test_final_random_ratio_must_be_a_share(value: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main(
            ["generator", "--out", "unused", "--tokenizer", "unused", "--final-random-ratio", value]
        )
    assert "--final-random-ratio" in capsys.readouterr().err


def test_learning_rate_warmup_then_cosine() -> None:
    assert learning_rate(0, 1000, 1.0, 100) == pytest.approx(0.01)
    assert learning_rate(99, 1000, 1.0, 100) == pytest.approx(1.0)
    assert learning_rate(550, 1000, 1.0, 100) == pytest.approx(0.5)
    assert learning_rate(999, 1000, 1.0, 100) < 1e-4


def test_balanced_batches_draw_every_class_equally() -> None:
    labels = torch.tensor([0] * 90 + [1] * 9 + [2])  # 90%, 9%, 1% of the images
    draws = torch.cat(
        [next(balanced_batches(labels, 300, torch.Generator().manual_seed(s))) for s in range(10)]
    )
    shares = torch.bincount(labels[draws], minlength=3) / len(draws)
    torch.testing.assert_close(shares, torch.full((3,), 1 / 3), atol=0.03, rtol=0)


def test_generator_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    model = RAR(TINY_RAR)
    V = TINY_RAR.codebook_size
    tokens = torch.randint(0, V, (8, 16))
    labels = torch.randint(0, TINY_RAR.condition_num_classes, (8,))
    orders = sample_orders(8, 16, 0.5, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = rar_loss(model, tokens, labels, orders)
    assert first.item() == pytest.approx(np.log(V), rel=0.05)  # untrained: uniform over codes
    for _ in range(20):
        loss = rar_loss(model, tokens, labels, orders)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert rar_loss(model, tokens, labels, orders).item() < first.item() - 0.3


def test_width_resizes_the_preset_with_32_wide_heads() -> None:
    expected = replace(
        RAR_PRESETS["bundled"],
        hidden_size=96,
        num_attention_heads=3,
        intermediate_size=384,
        num_hidden_layers=3,
        condition_num_classes=9,
        codebook_size=512,
    )
    assert generator_config("bundled", 9, 512, layers=3, width=96) == expected
    with pytest.raises(ValueError, match="multiple of 32"):
        generator_config("bundled", 9, 512, width=100)


def test_a_grown_generator_starts_out_computing_the_same_logits() -> None:
    torch.manual_seed(0)
    source = RAR(TINY_RAR)
    for p in source.parameters():  # trained-looking weights: adaLN no longer zero
        p.data.normal_(0, 0.05)
    deeper = RAR(replace(TINY_RAR, num_hidden_layers=5))
    grow(deeper, source)
    tokens = torch.randint(0, TINY_RAR.codebook_size, (3, 16))
    labels = torch.tensor([0, 4, TINY_RAR.null_class])
    orders = torch.stack([torch.randperm(16) for _ in range(3)])
    with torch.no_grad():
        torch.testing.assert_close(
            deeper(tokens, labels, orders), source(tokens, labels, orders), atol=1e-6, rtol=0
        )
    # The new blocks leave identity as soon as training starts.
    loss = rar_loss(deeper, tokens, labels, orders)
    loss.backward()
    assert all(b.adaLN_modulation[-1].weight.grad.abs().sum() > 0 for b in deeper.blocks)

    with pytest.raises(ValueError, match="cannot start"):
        grow(RAR(TINY_RAR), deeper)
    with pytest.raises(ValueError, match="cannot start"):
        grow(RAR(replace(TINY_RAR, hidden_size=64, intermediate_size=128)), source)


def test_a_generator_with_other_classes_starts_each_from_its_source_class() -> None:
    torch.manual_seed(0)
    source = RAR(TINY_RAR)
    for p in source.parameters():
        p.data.normal_(0, 0.05)
    C = TINY_RAR.condition_num_classes
    class_map = torch.tensor([3, 3, 0, C - 1, 1, 2, 3])
    model = RAR(replace(TINY_RAR, condition_num_classes=len(class_map)))
    grow(model, source, class_map)
    tokens = torch.randint(0, TINY_RAR.codebook_size, (8, 16))
    orders = torch.stack([torch.randperm(16) for _ in range(8)])
    labels = torch.tensor([*range(len(class_map)), model.config.null_class])
    source_labels = torch.tensor([*class_map.tolist(), TINY_RAR.null_class])
    with torch.no_grad():
        torch.testing.assert_close(
            model(tokens, labels, orders), source(tokens, source_labels, orders), atol=1e-6, rtol=0
        )
    with pytest.raises(ValueError, match="class_map"):
        grow(model, source)
    with pytest.raises(ValueError, match="class_map"):
        grow(model, source, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class_map"):
        grow(model, source, class_map + C)


def test_emoji_classes_start_from_their_group() -> None:
    groups = ("Flags", "Animals & Nature", "Flags", "Something new")
    source = ("Animals & Nature", "Flags")
    assert group_class_map(groups, source).tolist() == [1, 0, 1, 0]


def test_tokenizer_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    model = VQGAN(
        VQGANConfig(
            channel_mult=(1, 2),
            hidden_channels=32,
            resolution=16,
            z_channels=8,
            codebook_size=16,
            num_res_blocks=1,
        )
    )
    images = torch.rand(4, 3, 16, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss_fn() -> torch.Tensor:
        recon, vq_loss, _ = vq_forward(model, images)
        return torch.nn.functional.mse_loss(recon, images) + vq_loss

    first = loss_fn().item()
    for _ in range(15):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_fn().item() < first * 0.7


def test_cached_tokens_are_the_tokenizers_and_keyed_by_its_weights(tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    config = VQGANConfig(
        channel_mult=(1, 2), hidden_channels=32, resolution=16, z_channels=8, codebook_size=16
    )
    model = VQGAN(config).eval()
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    first = cached_tokens(model, images, tmp_path)
    assert torch.equal(first, tokenize(model, images))
    assert len(list(tmp_path.glob("tokens-*.pt"))) == 1
    with monkeypatch.context() as m:  # read back, not encoded again
        m.setattr("rar_demo.train.tokenize", lambda *a: pytest.fail("encoded again"))
        assert torch.equal(cached_tokens(model, images, tmp_path), first)
    flipped = cached_tokens(model, images, tmp_path, flip=True)
    assert torch.equal(flipped, tokenize(model, images, flip=True))
    with torch.no_grad():  # other weights, other tokens: never a stale entry
        model.quantize.embedding.weight.copy_(model.quantize.embedding.weight.flip(0))
    assert torch.equal(cached_tokens(model, images, tmp_path), tokenize(model, images))
    assert len(list(tmp_path.glob("tokens-*.pt"))) == 3


CLASSES = tuple(
    EmojiClass(chr(0x1F600 + i), f"face {i}", "Smileys & Emotion", "face-smiling") for i in range(9)
)


@pytest.fixture
def tiny_dataset(tmp_path):
    return random_emoji_data(CLASSES, 40, 10, tmp_path / "data.npz")


def test_training_runs_resume_and_export(tiny_dataset, tmp_path, capsys, monkeypatch) -> None:
    common = [
        "--data",
        str(tiny_dataset),
        "--batch-size",
        "4",
        "--log-every",
        "1",
        "--save-every",
        "1",
        "--warmup",
        "1",
        "--device",
        "cpu",
    ]
    tok, gen, out = tmp_path / "tok", tmp_path / "gen", tmp_path / "bundled"
    main(["tokenizer", "--out", str(tok), "--steps", "2", "--crop", "16", *common])
    main(["tokenizer", "--out", str(tok), "--steps", "3", "--crop", "16", *common])
    log = [json.loads(line) for line in (tok / "log.jsonl").read_text().splitlines()]
    assert {"event": "resumed", "step": 2} in [
        {k: r[k] for k in ("event", "step") if k in r} for r in log
    ]
    assert max(r["step"] for r in log if "loss" in r) == 3

    dec = tmp_path / "dec"
    main(["decoder", "--out", str(dec), "--tokenizer", str(tok), "--steps", "2", *common])
    before, after = load_checkpoint(tok)[1], load_checkpoint(dec)[1]
    frozen = [k for k in before if not k.startswith("decoder.")]
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # same tokens as before
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))

    main(["generator", "--out", str(gen), "--tokenizer", str(tok), "--steps", "1", *common])
    # resumed in bfloat16 autocast: the step computes in bf16, the checkpoint stays fp32
    autocast = []

    def loss(*args: torch.Tensor) -> torch.Tensor:
        autocast.append(torch.is_autocast_enabled("cpu"))
        return rar_loss(*args)

    monkeypatch.setattr(train_module, "rar_loss", loss)
    main(
        ["generator", "--out", str(gen), "--tokenizer", str(tok), "--steps", "2", "--bf16", *common]
    )
    assert autocast == [True]
    assert {v.dtype for v in load_checkpoint(gen)[1].values()} == {torch.float32}
    log = [json.loads(line) for line in (gen / "log.jsonl").read_text().splitlines()]
    heldout = [r for r in log if "heldout_nll_raster" in r]
    assert [r["step"] for r in heldout] == [1, 2]  # every checkpoint is scored
    assert all(0 < r["heldout_nll_random"] < 10 for r in heldout)
    clf = tmp_path / "clf"
    main(["classifier", "--out", str(clf), "--tokenizer", str(tok), "--steps", "2", *common])
    log = [json.loads(line) for line in (clf / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "heldout_top5" in r] == [1, 2]
    assert all(0 <= r["heldout_top1"] <= r["heldout_top5"] <= 1 for r in log if "loss" in r)
    with pytest.raises(SystemExit, match="nothing to export"):
        main(["export", "--data", str(tiny_dataset), "--out", str(out)])
    main(
        [
            "export",
            "--tokenizer",
            str(tok),
            "--generator",
            str(gen),
            "--classifier",
            str(clf),
            "--classifier-out",
            str(out / "eval" / "classifier.safetensors"),
            "--data",
            str(tiny_dataset),
            "--out",
            str(out),
        ]
    )
    classifier, classifier_classes = load_classifier(out / "eval" / "classifier.safetensors")
    assert classifier_classes == tuple(c.name for c in CLASSES)
    assert classifier.config.num_classes == len(CLASSES)
    model, classes = load_generator("bundled", weights=out / "generator.safetensors")
    assert classes == tuple(c.name for c in CLASSES)
    assert model.config.condition_num_classes == len(CLASSES)
    assert load_tokenizer("bundled", weights=out / "tokenizer.safetensors").config.resolution == 64

    # A later session goes on from the shipped weights alone (runs/ is not kept).
    more = tmp_path / "more"
    main(
        [
            "generator",
            "--out",
            str(more),
            "--tokenizer",
            str(out / "tokenizer.safetensors"),
            "--init",
            str(out / "generator.safetensors"),
            "--steps",
            "1",
            "--lr",
            "1e-12",
            "--balanced",
            *common,
        ]
    )
    resumed = load_checkpoint(more)[1]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(resumed[key], value, atol=1e-6, rtol=0)

    # ... or grows it deeper first.
    deeper = tmp_path / "deeper"
    layers = model.config.num_hidden_layers + 2
    shipped = ["--init", str(out / "generator.safetensors"), "--layers", str(layers)]
    tokenizer = ["--tokenizer", str(out / "tokenizer.safetensors")]
    main(["generator", "--out", str(deeper), *tokenizer, *shipped, "--steps", "1", *common])
    assert load_checkpoint(deeper)[0]["num_hidden_layers"] == layers

    # ... or starts a wider one from scratch.
    wide = tmp_path / "wide"
    size = ["--width", "64", "--layers", "2"]
    main(["generator", "--out", str(wide), *tokenizer, *size, "--steps", "1", *common])
    assert load_checkpoint(wide)[0]["hidden_size"] == 64
