"""`python -m rar_demo generate` end to end, offline, on the bundled model."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from rar_demo.__main__ import main
from rar_demo.pipeline import load_pipeline
from rar_demo.registry import BUNDLED_DIR
from rar_demo.sampler import generate


def test_bundled_generation_is_deterministic() -> None:
    pipe = load_pipeline("bundled")
    orders = pipe.orders(["raster", "random"], seed=3)
    labels = torch.full((2,), pipe.class_id("Flags"))
    first = generate(pipe.generator, labels, orders, pipe.sampling, seed=3)
    again = generate(pipe.generator, labels, orders, pipe.sampling, seed=3)
    other = generate(pipe.generator, labels, orders, pipe.sampling, seed=4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert (first >= 0).all()


def test_generate_sheet_and_gif(tmp_path, capsys) -> None:
    out = tmp_path / "fox.png"
    code = main(
        [
            "generate",
            "--class",
            "Animals & Nature",
            "--order",
            "raster",
            "--order",
            "random",
            "--seed",
            "0",
            "--out",
            str(out),
            "--gif",
        ]
    )
    assert code == 0
    sheet = Image.open(out)
    assert sheet.width > 2 * 64 * 4  # two panels at 4x
    gif = Image.open(out.with_suffix(".gif"))
    assert gif.n_frames > 20
    assert "Animals & Nature" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--class", "no such class"], "unknown class"),
        (["--class", "99"], "out of range"),
        (["--class", "Flags", "--order", "sideways"], "unknown order"),
        (["--class", "Flags", "--model", "rar_q"], "unknown model"),
        (["--class", "207", "--model", "rar_b"], "yucornetto/RAR/rar_b.bin"),
        (["--class", "Flags", "--cfg", "-1"], "guidance_scale"),
        (["--class", "Flags", "--backend", "onnx", "--compile"], "compile applies to the torch"),
        (["--class", "Flags", "--backend", "onnx", "--dtype", "bf16"], "exports fp32"),
        (["--class", "Flags", "--steps", "0"], "steps must be a positive"),
        (["--class", "Flags", "--steps", "257"], "steps must be between 1 and 256"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, tmp_path, capsys) -> None:
    code = main(["generate", "--out", str(tmp_path / "x.png"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert message in err.lower() or message in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_parallel_decoding_from_the_command_line(backend, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the ONNX export's cache
    out = tmp_path / "fast.png"
    args = ["generate", "--class", "Flags", "--order", "random", "--steps", "32"]
    assert main([*args, "--schedule", "cosine", "--backend", backend, "--out", str(out)]) == 0
    assert Image.open(out).width > 0 and "wrote" in capsys.readouterr().out


def test_local_weights(tmp_path) -> None:
    # A copy of the shipped files stands in for a locally downloaded checkpoint.
    out = tmp_path / "local.png"
    local = tmp_path / "weights"
    shutil.copytree(BUNDLED_DIR, local)
    code = main(
        [
            "generate",
            "--class",
            "Flags",
            "--out",
            str(out),
            "--weights",
            str(local / "generator.safetensors"),
            "--tokenizer-weights",
            str(local / "tokenizer.safetensors"),
        ]
    )
    assert code == 0 and out.exists()
    assert (
        main(
            [
                "generate",
                "--class",
                "Flags",
                "--out",
                str(out),
                "--weights",
                str(tmp_path / "missing.safetensors"),
            ]
        )
        == 2
    )


def test_module_entry_point(tmp_path) -> None:
    out = tmp_path / "flag.png"
    result = subprocess.run(
        [sys.executable, "-m", "rar_demo", "generate", "--class", "Flags", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert out.exists()


def test_classes_are_listed_one_per_line_and_each_line_finds_its_class(capsys) -> None:
    pipe = load_pipeline("bundled")
    assert main(["classes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(pipe.class_names)
    for line in lines:
        idx, label, *_ = line.split("\t")
        assert pipe.class_id(label) == int(idx) == pipe.class_id(pipe.class_names[int(idx)])
    query = pipe.class_names[2][-5:]
    assert main(["classes", "--search", query.upper()]) == 0
    found = capsys.readouterr().out.splitlines()
    assert found and all(query.lower() in line.lower() for line in found)


def test_picker_choices_and_command_line_names_are_the_same_classes(tmp_path, capsys) -> None:
    """What the picker shows (label) and sends (value) and what the CLI and API take by name
    all mean one class."""
    pipe = load_pipeline("bundled")
    for i, (label, value) in enumerate(pipe.class_choices()):
        assert pipe.class_id(value) == pipe.class_id(label) == i
    label, value = pipe.class_choices()[-1]
    out = tmp_path / "last.png"
    assert main(["generate", "--class", label, "--out", str(out)]) == 0
    assert f"({value}," in capsys.readouterr().out


def test_edit_writes_the_source_and_one_panel_per_order(tmp_path, capsys) -> None:
    source, out = tmp_path / "in.png", tmp_path / "edit.png"
    assert main(["generate", "--class", "0", "--out", str(source)]) == 0
    args = ["edit", "--image", str(source), "--class", "1", "--out", str(out)]
    assert main([*args, "--mask", "left", "--order", "raster", "--order", "random"]) == 0
    assert "128 cells regenerated" in capsys.readouterr().out
    assert Image.open(out).width > 3 * 256  # source, raster, random
    mask = tmp_path / "mask.png"
    Image.new("L", (16, 16)).save(mask)  # black: nothing to regenerate
    assert main([*args, "--mask", str(mask)]) == 2
    assert "the mask is empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mask", "sideways"], "unknown mask 'sideways'"),
        (["--mask", "left", "--image", "README.md"], "not a readable image"),
        (["--mask", "pyproject.toml"], "not a readable image"),
        (["--mask", "left", "--class", "Nowhere"], "unknown class"),
    ],
)
def test_bad_edit_input_is_one_clear_line(args, message, tmp_path, capsys) -> None:
    source = tmp_path / "in.png"
    Image.new("RGB", (64, 64), "white").save(source)
    base = ["edit", "--image", str(source), "--class", "0", "--out", str(tmp_path / "x.png")]
    assert main([*base, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "x.png").exists()
