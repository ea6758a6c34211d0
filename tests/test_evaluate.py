"""The bundled model's evaluation (`python -m rar_demo.evaluate`)."""

from __future__ import annotations

from dataclasses import replace

from PIL import Image

from rar_demo.evaluate import compare_int8
from rar_demo.pipeline import load_pipeline


def test_int8_comparison_on_the_bundled_model(tmp_path, monkeypatch) -> None:
    """`evaluate --int8` on one class: the int8 decoder (ranges calibrated on random codes)
    keeps the picture; the int8 generator's greedy tokens are compared with fp32's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    pipe = load_pipeline("bundled")
    metrics = compare_int8(replace(pipe, class_names=pipe.class_names[:1]), tmp_path)
    assert metrics["int8_decoder_psnr_db"] > 35  # measured about 39 over all classes
    assert 0 < metrics["int8_greedy_token_agreement"] <= 1
    assert Image.open(tmp_path / "int8.png").size[0] > 4 * pipe.tokenizer.config.resolution
