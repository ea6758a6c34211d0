"""Edit masks: presets and snapped strokes cell for cell, mask pictures, source pictures."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from rar_demo.masks import (
    MASK_PRESETS,
    MAX_PIXELS,
    edit_source,
    mask_from_image,
    open_image,
    prepare_image,
    preset_mask,
    shrink_to_center,
    snap,
)

GRID = (8, 8)


def _cells(*rows: str) -> torch.Tensor:
    return torch.tensor([[c == "#" for c in row] for row in rows])


def test_presets_cell_for_cell() -> None:
    half = ["####...."] * 8
    assert torch.equal(preset_mask("left", *GRID), _cells(*half))
    assert torch.equal(preset_mask("right", *GRID), ~_cells(*half))
    assert torch.equal(preset_mask("top", *GRID), _cells(*["########"] * 4, *["........"] * 4))
    assert torch.equal(preset_mask("bottom", *GRID), ~preset_mask("top", *GRID))
    center = _cells(*["........"] * 2, *["..####.."] * 4, *["........"] * 2)
    assert torch.equal(preset_mask("center", *GRID), center)
    assert torch.equal(preset_mask("border", *GRID), ~center)
    assert torch.equal(preset_mask("outpaint", *GRID), ~center)


def test_the_random_preset_is_half_the_cells_and_seeded() -> None:
    a, b = preset_mask("random", 16, 16, seed=1), preset_mask("random", 16, 16, seed=2)
    assert a.sum() == b.sum() == 128
    assert torch.equal(a, preset_mask("random", 16, 16, seed=1)) and not torch.equal(a, b)


def test_every_preset_has_a_mask_and_others_are_refused() -> None:
    for name in MASK_PRESETS:
        mask = preset_mask(name, 16, 16)
        assert mask.shape == (16, 16) and 0 < mask.sum() < 256
    with pytest.raises(ValueError, match="unknown mask 'diagonal'; choose one of left"):
        preset_mask("diagonal", 16, 16)


def test_strokes_snap_to_the_cells_they_cover_a_quarter_of() -> None:
    paint = np.zeros((32, 32), dtype=bool)  # 4x4 pixels per cell of the 8x8 grid
    paint[0:4, 0:4] = True  # all of cell (0, 0)
    paint[4:6, 4:6] = True  # a quarter of cell (1, 1)
    paint[8, 8] = True  # 1/16 of cell (2, 2): not enough
    cells = snap(paint, GRID)
    assert torch.nonzero(cells).tolist() == [[0, 0], [1, 1]]
    with pytest.raises(ValueError, match="does not divide"):
        snap(np.zeros((30, 32)), GRID)


def test_a_mask_picture_is_read_from_white_or_from_its_transparency() -> None:
    grey = np.zeros((32, 32), dtype=np.uint8)
    grey[:, 16:] = 255  # white right half
    expected = _cells(*["....####"] * 8)
    assert torch.equal(mask_from_image(Image.fromarray(grey), GRID, 32), expected)
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)  # black everywhere, opaque on the right
    rgba[:, 16:, 3] = 255
    assert torch.equal(mask_from_image(Image.fromarray(rgba), GRID, 32), expected)
    cells = Image.fromarray(expected.numpy().astype(np.uint8) * 255)  # 8x8: one pixel a cell
    assert torch.equal(mask_from_image(cells, GRID, 32), expected)
    with pytest.raises(ValueError, match=r"the mask is 20x32; draw it at the picture's size"):
        mask_from_image(Image.new("L", (20, 32)), GRID, 32)


def test_a_mask_at_the_pictures_size_is_cropped_as_the_picture_is() -> None:
    picture = Image.new("RGB", (96, 64), "red")  # landscape: 16 px cut from each side
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[:, 16:48] = 255  # the left half of what the crop keeps
    pixels, regenerate = edit_source(picture, Image.fromarray(mask), 32, GRID)
    assert pixels.shape == (32, 32, 3) and (pixels[..., 0] > 250).all()
    assert torch.equal(regenerate, preset_mask("left", *GRID))


def test_presets_by_name_and_outpaint_shrinks_the_picture() -> None:
    picture = np.zeros((32, 32, 3), dtype=np.uint8)  # black
    pixels, regenerate = edit_source(picture, "outpaint", 32, GRID)
    assert torch.equal(regenerate, preset_mask("border", *GRID))
    assert (pixels[8:24, 8:24] == 0).all() and (pixels[:8] == 255).all()
    assert np.array_equal(shrink_to_center(picture), pixels)
    same, _ = edit_source(picture, "center", 32, GRID)
    assert np.array_equal(same, picture)


def test_source_pictures_come_upright_on_white_centre_cropped() -> None:
    rgba = np.zeros((40, 60, 4), dtype=np.uint8)  # transparent, one opaque blue column
    rgba[:, 30, 2:] = 255
    out = prepare_image(Image.fromarray(rgba), 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert (out[:, :5] == 255).all()  # transparency became white
    assert out[:, 10, 0].max() < 200  # the column, centred after the crop


def test_unreadable_and_oversized_files_are_refused(tmp_path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(ValueError, match="not a readable image"):
        open_image(str(text))
    with pytest.raises(ValueError, match="not a readable image"):
        open_image(str(tmp_path / "missing.png"))
    buffer = io.BytesIO()
    Image.new("1", (MAX_PIXELS // 4000 + 1, 4000)).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="larger than"):
        open_image(buffer.getvalue())
    small = io.BytesIO()
    Image.new("RGB", (5, 7)).save(small, format="PNG")
    assert open_image(small.getvalue()).size == (5, 7)
