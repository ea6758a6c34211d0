"""Config validation, dict round trips and the paper's sampling presets."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from conftest import TINY_RAR, TINY_VQGAN

from rar_demo.config import (
    RAR_PRESETS,
    VQGAN_PRESETS,
    RARConfig,
    SamplingConfig,
    VQGANConfig,
)
from rar_demo.vqgan import VQGAN

SMALL_RAR = TINY_RAR.to_dict()
SMALL_VQGAN = TINY_VQGAN.to_dict()

# --- RARConfig ------------------------------------------------------------------------------


def test_small_rar_config_is_valid() -> None:
    config = RARConfig(**SMALL_RAR)
    assert (config.head_dim, config.grid_size, config.null_class) == (16, 4, 5)
    assert config.vocab_size == 64 + 1 + 5 + 1


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(RARConfig)])
@pytest.mark.parametrize("value", [0, -1, -16, 2.0, "32", None])
def test_rar_rejects_non_positive_or_non_int_fields(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        RARConfig(**{**SMALL_RAR, field: value})


@pytest.mark.parametrize(("hidden", "heads"), [(32, 3), (30, 4), (100, 16), (768, 5)])
def test_rar_rejects_hidden_not_divisible_by_heads(hidden, heads) -> None:
    with pytest.raises(ValueError, match="divisible"):
        RARConfig(**{**SMALL_RAR, "hidden_size": hidden, "num_attention_heads": heads})


@pytest.mark.parametrize("seq_len", [2, 15, 17, 32, 255, 257])
def test_rar_rejects_non_square_sequence(seq_len) -> None:
    with pytest.raises(ValueError, match="square"):
        RARConfig(**{**SMALL_RAR, "image_seq_len": seq_len})


@pytest.mark.parametrize("seq_len", [1, 4, 9, 64, 256])
def test_rar_accepts_square_sequences(seq_len) -> None:
    assert RARConfig(**{**SMALL_RAR, "image_seq_len": seq_len}).grid_size ** 2 == seq_len


# --- VQGANConfig ----------------------------------------------------------------------------


def test_small_vqgan_config_is_valid_and_builds() -> None:
    config = VQGANConfig(**SMALL_VQGAN)
    assert (config.num_resolutions, config.downsample_factor, config.grid_size) == (2, 2, 4)
    VQGAN(config)


@pytest.mark.parametrize(
    "field",
    [
        "hidden_channels",
        "num_channels",
        "num_res_blocks",
        "resolution",
        "z_channels",
        "codebook_size",
    ],
)
@pytest.mark.parametrize("value", [0, -1, 2.5])
def test_vqgan_rejects_non_positive_fields(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        VQGANConfig(**{**SMALL_VQGAN, field: value})


@pytest.mark.parametrize("mult", [(), (1, 0), (1, -2), (1, 1.5)])
def test_vqgan_rejects_bad_channel_mult(mult) -> None:
    with pytest.raises(ValueError, match="channel_mult"):
        VQGANConfig(**{**SMALL_VQGAN, "channel_mult": mult})


@pytest.mark.parametrize(
    ("hidden", "mult"),
    [
        (48, (1, 2)),  # 48 channels at the first level
        (40, (4, 8)),  # 160, 320 are fine, but conv_in's 40-wide output is not
        (16, (2, 4)),  # 32, 64 are fine, but conv_in's 16-wide output is not
        (32, (1, 2)),  # valid: for contrast
    ],
)
def test_vqgan_rejects_groupnorm_incompatible_widths(hidden, mult) -> None:
    """GroupNorm(32) needs every feature map, conv_in's output included, to be a multiple of 32.
    A config the check accepts must also build (torch would reject a bad GroupNorm itself)."""
    kwargs = {**SMALL_VQGAN, "hidden_channels": hidden, "channel_mult": mult}
    if hidden % 32 == 0:
        VQGAN(VQGANConfig(**kwargs))
        return
    with pytest.raises(ValueError, match="divisible by 32"):
        VQGANConfig(**kwargs)


@pytest.mark.parametrize(("resolution", "mult"), [(10, (1, 1, 2)), (9, (1, 2)), (24, (1,) * 5)])
def test_vqgan_rejects_resolution_not_divisible_by_downsampling(resolution, mult) -> None:
    with pytest.raises(ValueError, match="resolution"):
        VQGANConfig(**{**SMALL_VQGAN, "resolution": resolution, "channel_mult": mult})


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 2.0, math.nan])
def test_vqgan_rejects_bad_dropout(dropout) -> None:
    with pytest.raises(ValueError, match="dropout"):
        VQGANConfig(**{**SMALL_VQGAN, "dropout": dropout})


def test_vqgan_channel_mult_is_normalised_to_tuple() -> None:
    config = VQGANConfig(**{**SMALL_VQGAN, "channel_mult": [1, 2]})
    assert config.channel_mult == (1, 2)
    assert config == VQGANConfig(**SMALL_VQGAN)
    hash(config)  # frozen and hashable, which a list field would break


def test_vqgan_from_dict_checks_num_resolutions() -> None:
    data = {**VQGANConfig(**SMALL_VQGAN).to_dict()}
    assert VQGANConfig.from_dict({**data, "num_resolutions": 2}) == VQGANConfig(**SMALL_VQGAN)
    with pytest.raises(ValueError, match="num_resolutions"):
        VQGANConfig.from_dict({**data, "num_resolutions": 3})


# --- SamplingConfig -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"guidance_scale": -0.5}, "guidance_scale"),
        ({"guidance_scale": math.nan}, "guidance_scale"),
        ({"guidance_power": -1.0}, "guidance_power"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": -0.1}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -3}, "top_k"),
    ],
)
def test_sampling_rejects_bad_values(changes, field) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**changes)
    # with_ validates too: a valid config cannot be turned into an invalid one.
    with pytest.raises(ValueError, match=field):
        SamplingConfig().with_(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"temperature": 1e-3},
        {"guidance_scale": 0.0},
        {"guidance_scale": 16.0, "guidance_power": 0.0},
        {"top_p": 1.0},
        {"top_p": 1e-6},
        {"top_k": 1},
        {"top_k": 10_000, "top_p": 0.9, "greedy": True},
    ],
)
def test_sampling_accepts_edge_values(changes) -> None:
    config = SamplingConfig(**changes)
    assert all(getattr(config, k) == v for k, v in changes.items())


def test_sampling_with_returns_a_new_config() -> None:
    base = SamplingConfig()
    changed = base.with_(temperature=0.5, top_k=3)
    assert (changed.temperature, changed.top_k) == (0.5, 3)
    assert base == SamplingConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.temperature = 2.0  # type: ignore[misc]


# --- dict round trips -----------------------------------------------------------------------

ALL_PRESETS = [
    *[pytest.param(RARConfig, c, id=f"rar-{n}") for n, c in RAR_PRESETS.items()],
    *[pytest.param(VQGANConfig, c, id=f"vqgan-{n}") for n, c in VQGAN_PRESETS.items()],
]


@pytest.mark.parametrize(("cls", "config"), ALL_PRESETS)
def test_to_dict_round_trips_through_json(cls, config) -> None:
    data = config.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(cls)}
    assert cls.from_dict(json.loads(json.dumps(data))) == config


@pytest.mark.parametrize(("cls", "config"), ALL_PRESETS)
def test_from_dict_ignores_unknown_keys(cls, config) -> None:
    data = {**config.to_dict(), "model_type": "rar", "dtype": "float16", "extra": [1, 2]}
    assert cls.from_dict(data) == config


def test_from_dict_fills_defaults_and_validates() -> None:
    assert RARConfig.from_dict({}) == RARConfig()
    assert RARConfig.from_dict({"hidden_size": 1024}).hidden_size == 1024
    with pytest.raises(ValueError):
        RARConfig.from_dict({**SMALL_RAR, "num_attention_heads": 3})


# --- presets --------------------------------------------------------------------------------


def test_bundled_presets_share_the_official_token_grid() -> None:
    bundled, official = RAR_PRESETS["bundled"], RAR_PRESETS["rar_b"]
    assert bundled.image_seq_len == official.image_seq_len
    assert bundled.codebook_size == VQGAN_PRESETS["bundled"].codebook_size
    assert VQGAN_PRESETS["bundled"].grid_size == bundled.grid_size
    assert VQGAN_PRESETS["maskgit_vqgan_f16_256"].grid_size == official.grid_size
    assert VQGAN_PRESETS["maskgit_vqgan_f16_256"].codebook_size == official.codebook_size
