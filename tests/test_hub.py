"""Weights loading (never touching the network) and the Pipeline's class lookup."""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY_RAR, TINY_VQGAN, randomized
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import safe_open
from safetensors.torch import save_file

from rar_demo import hub
from rar_demo.hub import (
    WeightsUnavailable,
    fetch,
    load_generator,
    load_tokenizer,
    random_models,
    read_weights,
    save_bundled,
)
from rar_demo.model import RAR
from rar_demo.registry import MODEL_NAMES, MODELS, HubFile, spec
from rar_demo.vqgan import VQGAN

RAR_CONFIG = replace(TINY_RAR, condition_num_classes=10)
VQGAN_CONFIG = TINY_VQGAN


@pytest.fixture(scope="module")
def generator() -> RAR:
    return randomized(RAR(RAR_CONFIG))


@pytest.fixture(scope="module")
def tokenizer() -> VQGAN:
    return randomized(VQGAN(VQGAN_CONFIG), seed=1)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, so a file cached on this machine cannot mask the test."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


# --- fetching official checkpoints ----------------------------------------------------------

OFFICIAL = list(
    dict.fromkeys(
        file
        for entry in MODELS.values()
        for file in (entry.generator_weights, entry.tokenizer_weights)
        if isinstance(file, HubFile)
    )
)
TOKENIZER = spec("rar_b").tokenizer_weights


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
        fetch(spec("rar_b").generator_weights)


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
    assert fetch(spec("rar_l").generator_weights) == cached


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


def test_read_weights_missing_path(tmp_path) -> None:
    for path in (tmp_path / "nope.bin", tmp_path / "nope.safetensors", tmp_path):
        with pytest.raises(WeightsUnavailable, match="not found"):
            read_weights(path)[1]
    with pytest.raises(WeightsUnavailable):
        load_generator("rar_b", weights=tmp_path / "missing.bin")


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth"])
def test_read_weights_torch_file(tmp_path, generator, suffix) -> None:
    path = tmp_path / f"weights{suffix}"
    state = generator.state_dict()
    torch.save(state, path)
    loaded = read_weights(str(path))[1]
    assert loaded.keys() == state.keys()
    for key in state:
        assert torch.equal(loaded[key], state[key]), key
    # A torch file read this way builds a working model.
    model = hub.materialize(RAR, RAR_CONFIG, loaded)
    tokens, labels, orders = (
        torch.zeros(1, 16, dtype=torch.long),
        torch.tensor([1]),
        torch.arange(16)[None],
    )
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, labels, orders), generator(tokens, labels, orders))


class _NotATensor:
    pass


def test_read_weights_refuses_arbitrary_pickles(tmp_path) -> None:
    """weights_only=True: a checkpoint cannot run code or smuggle in arbitrary objects."""
    path = tmp_path / "evil.bin"
    torch.save({"w": torch.zeros(2), "payload": _NotATensor()}, path)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        read_weights(path)[1]


def test_read_weights_safetensors(tmp_path) -> None:
    path = tmp_path / "weights.safetensors"
    tensors = {"a": torch.arange(6.0).view(2, 3), "b.c": torch.ones(4, dtype=torch.float16)}
    save_file(tensors, path)
    loaded = read_weights(path)[1]
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in tensors.items())


@pytest.mark.parametrize("kind", ["generator", "tokenizer"])
def test_bundled_round_trip(tmp_path, kind, request) -> None:
    model = request.getfixturevalue(kind)
    path = tmp_path / "deep" / "dir" / f"{kind}.safetensors"  # parents are created
    class_names = [f"class {i}" for i in range(RAR_CONFIG.condition_num_classes)]
    save_bundled(model, path, class_names=class_names, steps=1234)

    with safe_open(path, "pt") as f:  # on disk: fp16
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118
    meta, state = read_weights(path)
    assert meta["config"] == model.config.to_dict()
    assert meta["class_names"] == class_names and meta["steps"] == 1234
    original = model.state_dict()
    assert state.keys() == original.keys()
    for key, value in state.items():
        assert value.dtype == torch.float16, key
        assert torch.equal(value, original[key].half()), key

    if kind == "generator":
        loaded, classes = load_generator("bundled", weights=path)
        assert classes == tuple(class_names)
    else:
        loaded = load_tokenizer("bundled", weights=str(path))
    assert loaded.config == model.config
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key].half().float()), key


def test_missing_bundled_weights_say_how_to_restore(tmp_path, monkeypatch) -> None:
    moved = replace(spec("bundled"), generator_weights=tmp_path / "generator.safetensors")
    monkeypatch.setitem(MODELS, "bundled", moved)
    with pytest.raises(WeightsUnavailable, match="git checkout"):
        load_generator("bundled")
    with pytest.raises(WeightsUnavailable):
        load_generator("bundled", weights=tmp_path / "generator.safetensors")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_random_models_have_the_registered_sizes(name) -> None:
    with torch.device("meta"):  # real sizes, no memory
        model, tokenizer = random_models(name)
    assert model.config == spec(name).generator and tokenizer.config == spec(name).tokenizer


@pytest.mark.slow
def test_loading_the_bundled_models_imports_neither_dynamo_nor_the_hub_client() -> None:
    """Start-up: meta-device normal_ imports torch._dynamo (about 2 s), huggingface_hub's
    download client 0.2-0.3 s; loading the bundled models needs neither."""
    code = (
        "import sys; from rar_demo.hub import load_generator, load_tokenizer; "
        "load_generator('bundled'); load_tokenizer('bundled'); "
        "print([m in sys.modules for m in ('torch._dynamo', 'huggingface_hub.file_download')])"
    )
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[False, False]"
