"""The model registry: one entry per model, consistent with the presets and the shipped files."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import TINY_VQGAN, tiny_spec

from rar_demo.hub import read_weights
from rar_demo.registry import MODEL_NAMES, MODELS, RUNTIMES, HubFile, spec

PAPER_SAMPLING = {
    "rar_b": (1.0, 16.0, 2.75),
    "rar_l": (1.02, 15.5, 2.5),
    "rar_xl": (1.02, 6.9, 1.5),
    "rar_xxl": (1.02, 8.0, 1.2),
}


@pytest.mark.parametrize("name", list(PAPER_SAMPLING))
def test_official_models_sample_with_the_paper_values(name) -> None:
    preset = spec(name).sampling
    assert (preset.temperature, preset.guidance_scale, preset.guidance_power) == PAPER_SAMPLING[
        name
    ]
    # The paper samples from the full distribution: no truncation, not greedy.
    assert (preset.top_k, preset.top_p, preset.greedy) == (None, None, False)
    assert isinstance(spec(name).generator_weights, HubFile)


def test_the_bundled_model_is_offline_and_first() -> None:
    assert MODEL_NAMES[0] == "bundled"
    bundled = spec("bundled")
    assert not isinstance(bundled.generator_weights, HubFile)
    assert not isinstance(bundled.tokenizer_weights, HubFile)


@pytest.mark.parametrize("name", ["rar_xs", "RAR_B", "", None, "maskgit_vqgan_f16_256"])
def test_unknown_model_names_every_known_one(name) -> None:
    with pytest.raises(ValueError, match="unknown model") as info:
        spec(name)
    assert all(known in str(info.value) for known in MODEL_NAMES)


def test_shipped_bundled_weights_match_the_registry() -> None:
    bundled = spec("bundled")
    gen_meta, _ = read_weights(bundled.generator_weights)
    tok_meta, _ = read_weights(bundled.tokenizer_weights)
    assert gen_meta["config"] == bundled.generator.to_dict()
    assert tok_meta["config"] == bundled.tokenizer.to_dict()
    assert len(gen_meta["class_names"]) == bundled.generator.condition_num_classes


def test_runtimes_are_checked_with_the_reason() -> None:
    for entry in MODELS.values():
        assert set(entry.runtimes) <= set(RUNTIMES) and "torch" in entry.runtimes
        for runtime in entry.runtimes:
            entry.check_runtime(runtime)
    with pytest.raises(ValueError, match="int8 changes the bundled model's pictures"):
        spec("bundled").check_runtime("onnx int8")
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        spec("rar_b").check_runtime("tensorrt")


def test_entries_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown runtimes"):
        tiny_spec(runtimes=("torch", "tensorrt"))
    with pytest.raises(ValueError, match="cpu_runtime 'onnx int8' is not offered"):
        tiny_spec(cpu_runtime="onnx int8")
    with pytest.raises(ValueError, match="codebooks differ"):
        tiny_spec(tokenizer=replace(TINY_VQGAN, codebook_size=32))
    with pytest.raises(ValueError, match="grids differ"):
        tiny_spec(tokenizer=replace(TINY_VQGAN, resolution=16))
