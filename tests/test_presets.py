"""The real-size presets build exactly the official checkpoints' layout; loading is strict.

The official weights cannot be downloaded here, so the layout is pinned by the manifest of
every key and shape in them (tests/fixtures/parity/official_state_dict_shapes.json).
Real-size models are built on the `meta` device: no memory, no initialisation.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, TINY_RAR, TINY_VQGAN

from rar_demo.config import RAR_PRESETS, VQGAN_PRESETS
from rar_demo.hub import materialize
from rar_demo.model import RAR
from rar_demo.registry import MODELS, HubFile
from rar_demo.vqgan import VQGAN

MANIFEST = FIXTURES / "official_state_dict_shapes.json"

OFFICIAL = [
    *[(name, RAR, RAR_PRESETS[name]) for name in ("rar_b", "rar_l", "rar_xl", "rar_xxl")],
    ("maskgit_vqgan_f16_256", VQGAN, VQGAN_PRESETS["maskgit_vqgan_f16_256"]),
]

# Parameter counts from the RAR paper (Table 1 / README): 261M, 461M, 955M, 1499M.
PAPER_PARAMS = {"rar_b": 261e6, "rar_l": 461e6, "rar_xl": 955e6, "rar_xxl": 1499e6}


@pytest.fixture(scope="module")
def manifest() -> dict:
    assert MANIFEST.is_file(), f"missing {MANIFEST}"
    return json.loads(MANIFEST.read_text())


def _meta_model(model_cls, config) -> torch.nn.Module:
    with torch.device("meta"):
        return model_cls(config)


def test_manifest_covers_every_official_checkpoint(manifest) -> None:
    official = [s for s in MODELS.values() if isinstance(s.generator_weights, HubFile)]
    assert set(manifest) == {*(s.name for s in official), "maskgit_vqgan_f16_256"}
    # Every official checkpoint maps to the preset of the right kind.
    assert all(s.generator == RAR_PRESETS[s.name] for s in official)
    assert all(s.tokenizer == VQGAN_PRESETS["maskgit_vqgan_f16_256"] for s in official)


@pytest.mark.parametrize(("name", "model_cls", "config"), OFFICIAL, ids=[o[0] for o in OFFICIAL])
def test_preset_config_matches_official(manifest, name, model_cls, config) -> None:
    official = manifest[name]["config"]
    ours = config.to_dict()
    # Every field of ours is named by the official config, with the same value ...
    assert set(ours) <= set(official), set(ours) - set(official)
    # ... and every official entry (also derived ones like num_resolutions) matches.
    for key, value in official.items():
        actual = getattr(config, key)
        actual = list(actual) if isinstance(actual, tuple) else actual
        assert actual == value, f"{name}.{key}: {actual!r} != official {value!r}"
    # The official config dict maps back onto exactly this preset.
    assert type(config).from_dict(official) == config


@pytest.mark.parametrize(("name", "model_cls", "config"), OFFICIAL, ids=[o[0] for o in OFFICIAL])
def test_meta_model_has_official_keys_and_shapes(manifest, name, model_cls, config) -> None:
    expected = {k: list(v) for k, v in manifest[name]["state_dict"].items()}
    state = _meta_model(model_cls, config).state_dict()
    actual = {k: list(v.shape) for k, v in state.items()}
    assert sorted(set(expected) - set(actual)) == [], "keys the model lacks"
    assert sorted(set(actual) - set(expected)) == [], "keys the checkpoint lacks"
    wrong = {k: (actual[k], expected[k]) for k in expected if actual[k] != expected[k]}
    assert wrong == {}, f"shape mismatches (ours, official): {wrong}"
    assert all(t.is_meta for t in state.values())


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_rar_parameter_counts(name) -> None:
    model = _meta_model(RAR, RAR_PRESETS[name])
    count = sum(p.numel() for p in model.parameters())
    assert 255e6 <= count <= 1.5e9  # "261M to 1.5B"
    assert count == pytest.approx(PAPER_PARAMS[name], rel=5e-3)


def test_parameter_counts_grow_with_size() -> None:
    counts = [
        sum(p.numel() for p in _meta_model(RAR, RAR_PRESETS[n]).parameters()) for n in PAPER_PARAMS
    ]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


# --- hub.materialize: meta construction + strict assignment ---------------------------------------


def _reference_state(model_cls, config) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = model_cls(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)  # distinct values everywhere, not the zero init
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("model_cls", "config"), [(RAR, TINY_RAR), (VQGAN, TINY_VQGAN)], ids=["rar", "vqgan"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_build_assigns_state_onto_meta_model(model_cls, config, dtype) -> None:
    state = _reference_state(model_cls, config)
    model = materialize(model_cls, config, state, dtype=dtype)
    assert isinstance(model, model_cls) and model.config == config
    assert not model.training
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in loaded.items():
        assert not value.is_meta, key
        assert value.device.type == "cpu" and value.dtype == dtype, key
        torch.testing.assert_close(value, state[key].to(dtype), rtol=0, atol=0, msg=key)
    assert not any(p.requires_grad for p in model.parameters())


def test_built_model_computes_like_the_original() -> None:
    state = _reference_state(RAR, TINY_RAR)
    original = RAR(TINY_RAR).eval()
    original.load_state_dict(state)
    built = materialize(RAR, TINY_RAR, state)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 4])
    orders = torch.stack([torch.arange(16), torch.arange(16).flip(0)])
    with torch.no_grad():
        torch.testing.assert_close(built(tokens, labels, orders), original(tokens, labels, orders))


@pytest.mark.parametrize(
    ("defect", "error"),
    [("missing", "Missing key"), ("extra", "Unexpected key"), ("shape", "size mismatch")],
)
@pytest.mark.parametrize(
    ("model_cls", "config"), [(RAR, TINY_RAR), (VQGAN, TINY_VQGAN)], ids=["rar", "vqgan"]
)
def test_build_is_strict(model_cls, config, defect, error) -> None:
    state = _reference_state(model_cls, config)
    key = next(iter(state))
    if defect == "missing":
        del state[key]
    elif defect == "extra":
        state["unexpected.weight"] = torch.zeros(3)
    else:
        state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
    with pytest.raises(RuntimeError, match=error):
        materialize(model_cls, config, state)
