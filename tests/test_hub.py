"""Weights loading (never touching the network) and the Pipeline's class lookup."""

from __future__ import annotations

import json
import pickle
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import safe_open
from safetensors.torch import save_file
from tiny import TINY_RAR, TINY_VQGAN
from torch import nn

from rar_demo import hub
from rar_demo.config import SamplingConfig
from rar_demo.hub import (
    GENERATORS,
    IMAGENET_CLASSES,
    MODEL_NAMES,
    TOKENIZER,
    WeightsUnavailable,
    fetch,
    load_generator,
    load_tokenizer,
    read_bundled,
    read_state_dict,
    save_bundled,
)
from rar_demo.model import RAR
from rar_demo.orders import make_order
from rar_demo.pipeline import Pipeline
from rar_demo.vqgan import VQGAN

RAR_CONFIG = replace(TINY_RAR, condition_num_classes=10)  # one per entry of CLASSES
VQGAN_CONFIG = TINY_VQGAN


def _random(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def generator() -> RAR:
    return _random(RAR(RAR_CONFIG))


@pytest.fixture(scope="module")
def tokenizer() -> VQGAN:
    return _random(VQGAN(VQGAN_CONFIG), seed=1)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, so a file cached on this machine cannot mask the test."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


# --- fetching official checkpoints ----------------------------------------------------------

OFFICIAL = [*GENERATORS.values(), TOKENIZER]


@pytest.mark.parametrize("checkpoint", OFFICIAL, ids=[c.filename for c in OFFICIAL])
def test_fetch_offline_fails_fast_with_instructions(checkpoint, empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailable) as info:
        fetch(checkpoint)
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert checkpoint.repo_id in message and checkpoint.filename in message
    assert f"hf download {checkpoint.repo_id} {checkpoint.filename}" in message
    assert "offline" in message


def test_fetch_without_dns_fails_fast(empty_hub_cache, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_hub_resolves", lambda: False)

    def no_download(*args, **kwargs):
        if not kwargs.get("local_files_only"):
            raise AssertionError("must not try to download when the Hub does not resolve")
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(hub, "hf_hub_download", no_download)
    with pytest.raises(WeightsUnavailable, match=r"rar_b\.bin"):
        fetch(GENERATORS["rar_b"])


@pytest.mark.parametrize(("value", "downloads"), [("0", True), ("false", True), ("1", False)])
def test_fetch_parses_hf_hub_offline_like_the_hub(tmp_path, monkeypatch, value, downloads):
    """HF_HUB_OFFLINE=0 means online: fetch must download (stubbed here), not refuse."""
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.setattr(hub, "_hub_resolves", lambda: True)
    calls = []

    def fake_download(repo_id, filename, local_files_only=False):
        calls.append(local_files_only)
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        return str(tmp_path / filename)

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    if downloads:
        assert fetch(TOKENIZER) == tmp_path / TOKENIZER.filename
        assert calls == [True, False]
    else:
        with pytest.raises(WeightsUnavailable, match="offline"):
            fetch(TOKENIZER)
        assert calls == [True]


def test_fetch_returns_a_cached_file(tmp_path, monkeypatch) -> None:
    cached = tmp_path / "rar_l.bin"
    monkeypatch.setattr(hub, "hf_hub_download", lambda *a, **k: str(cached))
    assert fetch(GENERATORS["rar_l"]) == cached


def test_official_generator_offline_raises_weights_unavailable(empty_hub_cache) -> None:
    with pytest.raises(WeightsUnavailable, match="yucornetto/RAR"):
        load_generator("rar_b")
    with pytest.raises(WeightsUnavailable, match="fun-research/TiTok"):
        load_tokenizer("rar_xl")


@pytest.mark.parametrize("name", ["rar_xs", "RAR_B", "", "maskgit_vqgan_f16_256"])
def test_unknown_model_name_raises_value_error(name) -> None:
    with pytest.raises(ValueError, match="unknown model") as info:
        load_generator(name)
    assert all(known in str(info.value) for known in MODEL_NAMES)
    with pytest.raises(ValueError, match="unknown model"):
        load_tokenizer(name)


# --- reading weights ------------------------------------------------------------------------


def test_read_state_dict_missing_path(tmp_path) -> None:
    for path in (tmp_path / "nope.bin", tmp_path / "nope.safetensors", tmp_path):
        with pytest.raises(WeightsUnavailable, match="not found"):
            read_state_dict(path)
    with pytest.raises(WeightsUnavailable):
        load_generator("rar_b", weights=tmp_path / "missing.bin")


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth"])
def test_read_state_dict_torch_file(tmp_path, generator, suffix) -> None:
    path = tmp_path / f"weights{suffix}"
    state = generator.state_dict()
    torch.save(state, path)
    loaded = read_state_dict(str(path))
    assert loaded.keys() == state.keys()
    for key in state:
        assert torch.equal(loaded[key], state[key]), key
    # A torch file read this way builds a working model.
    model = hub.build(RAR, RAR_CONFIG, loaded)
    tokens, labels, orders = (
        torch.zeros(1, 16, dtype=torch.long),
        torch.tensor([1]),
        torch.arange(16)[None],
    )
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, labels, orders), generator(tokens, labels, orders))


class _NotATensor:
    pass


def test_read_state_dict_refuses_arbitrary_pickles(tmp_path) -> None:
    """weights_only=True: a checkpoint cannot run code or smuggle in arbitrary objects."""
    path = tmp_path / "evil.bin"
    torch.save({"w": torch.zeros(2), "payload": _NotATensor()}, path)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        read_state_dict(path)


def test_read_state_dict_safetensors(tmp_path) -> None:
    path = tmp_path / "weights.safetensors"
    tensors = {"a": torch.arange(6.0).view(2, 3), "b.c": torch.ones(4, dtype=torch.float16)}
    save_file(tensors, path)
    loaded = read_state_dict(path)
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in tensors.items())


@pytest.mark.parametrize("kind", ["generator", "tokenizer"])
def test_bundled_round_trip(tmp_path, kind, request) -> None:
    model = request.getfixturevalue(kind)
    path = tmp_path / "deep" / "dir" / f"{kind}.safetensors"  # parents are created
    class_names = list(CLASSES)
    save_bundled(model, path, class_names=class_names, steps=1234)

    with safe_open(path, "pt") as f:  # on disk: fp16
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118
    meta, state = read_bundled(path)
    assert meta["config"] == model.config.to_dict()
    assert meta["class_names"] == class_names and meta["steps"] == 1234
    original = model.state_dict()
    assert state.keys() == original.keys()
    for key, value in state.items():
        assert value.dtype == torch.float32, key
        assert torch.equal(value, original[key].half().float()), key

    if kind == "generator":
        loaded, classes = load_generator("bundled", weights=path)
        assert classes == tuple(class_names)
    else:
        loaded = load_tokenizer("bundled", weights=str(path))
    assert loaded.config == model.config
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key].half().float()), key


def test_read_bundled_missing_says_how_to_restore(tmp_path) -> None:
    with pytest.raises(WeightsUnavailable, match="git checkout"):
        read_bundled(tmp_path / "generator.safetensors")
    with pytest.raises(WeightsUnavailable):
        load_generator("bundled", weights=tmp_path / "generator.safetensors")


# --- Pipeline.class_id ----------------------------------------------------------------------

CLASSES = (
    "tench, Tinca tinca",
    "goldfish, Carassius auratus",
    "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias",
    "tiger shark, Galeocerdo cuvieri",
    "golden retriever",
    "Labrador retriever",
    "tiger cat",
    "tiger, Panthera tigris",
    "crane",
    "crane",
)


def _pipeline(generator, tokenizer, classes=CLASSES) -> Pipeline:
    return Pipeline("tiny", generator, tokenizer, tuple(classes), SamplingConfig(greedy=True))


@pytest.fixture(scope="module")
def pipe(generator, tokenizer) -> Pipeline:
    return _pipeline(generator, tokenizer)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (0, 0),
        (9, 9),
        ("4", 4),
        (" 7 ", 7),
        ("007", 7),
        ("golden retriever", 4),  # exact
        ("Golden Retriever  ", 4),  # case and whitespace
        ("tench, Tinca tinca", 0),  # exact, the full ImageNet name
        ("tench", 0),  # a comma-separated synonym
        ("Tinca tinca", 0),
        ("goldfish", 1),
        ("white shark", 2),
        ("tiger", 7),  # a synonym wins over substring hits in tiger shark and tiger cat
        ("tiger cat", 6),  # exact wins over the substring hit in nothing else
        ("labrador", 5),  # unique substring
        ("carassius", 1),  # unique substring of a synonym
        ("man-eat", 2),
    ],
)
def test_class_id_resolves(pipe, query, expected) -> None:
    assert pipe.class_id(query) == expected


@pytest.mark.parametrize("query", ["retriever", "shark", "crane", "gold", "tige"])
def test_class_id_ambiguous(pipe, query) -> None:
    with pytest.raises(ValueError, match="ambiguous"):
        pipe.class_id(query)


def test_ambiguous_message_lists_the_candidates(pipe) -> None:
    with pytest.raises(ValueError) as info:
        pipe.class_id("retriever")
    assert "golden retriever" in str(info.value) and "Labrador retriever" in str(info.value)


@pytest.mark.parametrize("query", [10, 1000, -1, "10", "99"])
def test_class_id_out_of_range(pipe, query) -> None:
    with pytest.raises(ValueError, match=r"out of range|unknown class"):
        pipe.class_id(query)


@pytest.mark.parametrize("query", ["", "   ", "zebra", "-1", "tench, goldfish"])
def test_class_id_unknown(pipe, query) -> None:
    with pytest.raises(ValueError):
        pipe.class_id(query)


def test_class_id_with_the_real_imagenet_names(generator, tokenizer) -> None:
    names = json.loads(IMAGENET_CLASSES.read_text())
    assert len(names) == 1000
    real = _pipeline(generator, tokenizer, names)
    assert real.class_id("golden retriever") == 207
    assert real.class_id("tench") == 0
    assert real.class_id("Tinca tinca") == 0
    assert real.class_id("tiger") == 292
    assert real.class_id("999") == 999
    with pytest.raises(ValueError, match="ambiguous"):
        real.class_id("crane")  # 134 the bird and 517 the machine
    with pytest.raises(ValueError, match="out of range"):
        real.class_id(1000)


# --- Pipeline streaming and decoding --------------------------------------------------------


def test_pipeline_streams_one_panel_per_order_and_decodes(pipe) -> None:
    names = ["raster", "spiral", "random"]
    events = list(
        pipe.stream(pipe.class_id("tiger"), names, seed=3, sampling=SamplingConfig(greedy=True))
    )
    assert len(events) == 16
    orders = torch.stack([make_order(n, 4, 4, seed=3) for n in names])
    assert all(torch.equal(e.positions, orders[:, e.step]) for e in events)
    # Greedy, same class: a panel depends on its order only, and orders change the picture.
    assert not torch.equal(events[-1].canvas[0], events[-1].canvas[1])
    images = pipe.decode(events[3].canvas)  # a partial canvas (-1 cells) decodes too
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    with pytest.raises(ValueError, match="at least one"):
        pipe.orders([], seed=0)
