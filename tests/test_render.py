"""Frames from tokens: pending cells, the newest cell's outline, preview patches, sheets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_VQGAN, randomized
from PIL import Image

from rar_demo.render import (
    HIGHLIGHT,
    LiveFrames,
    code_patches,
    display_scale,
    mark_progress,
    preview,
    save_animation,
    sheet,
    to_uint8,
)
from rar_demo.vqgan import VQGAN

GRID = (4, 4)


@pytest.fixture(scope="module")
def tokenizer() -> VQGAN:
    return randomized(VQGAN(TINY_VQGAN))


def test_to_uint8_rounds_and_clamps() -> None:
    images = torch.tensor([-0.5, 0.0, 0.5, 1.0, 2.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = to_uint8(images)
    assert out.shape == (1, 1, 5, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_mark_progress_hatches_pending_cells_and_outlines_the_newest() -> None:
    images = torch.zeros(1, 3, 16, 16)  # black picture, 4 px cells
    canvas = torch.full((1, 16), -1)
    canvas[0, :5] = 3  # five cells done, raster
    frame = mark_progress(images, canvas, torch.tensor([4]), GRID)[0]
    done, pending = frame[:4, :4], frame[8:, 8:]
    assert (done == 0).all()
    # 0.25 * black + 0.75 * one of two stripe greys: light, striped.
    assert set(np.unique(pending).tolist()) == {round(0.75 * 0.80 * 255), round(0.75 * 0.88 * 255)}
    row, col = divmod(4, 4)
    assert tuple(frame[row * 4, col * 4]) == HIGHLIGHT
    assert tuple(frame[row * 4 + 1, col * 4 + 1]) != HIGHLIGHT  # an outline, not a fill
    assert (mark_progress(images, canvas, None, GRID)[0] != HIGHLIGHT).any(-1).all()
    # -1: no newest cell for that panel (finished beside unfinished ones).
    two = mark_progress(images.repeat(2, 1, 1, 1), canvas.repeat(2, 1), torch.tensor([4, -1]), GRID)
    assert tuple(two[0, row * 4, col * 4]) == HIGHLIGHT
    assert (two[1] != HIGHLIGHT).any(-1).all()


def test_code_patches_tile_a_decode(tokenizer: VQGAN) -> None:
    patches = code_patches(tokenizer)
    V = TINY_VQGAN.codebook_size
    assert patches.shape == (V, 3, 2, 2)
    canvas = torch.arange(16)[None] * 3 % V
    pasted = preview(canvas, patches, GRID)
    assert pasted.shape == (1, 3, 8, 8)
    # Cell (1, 2) shows its code's patch.
    torch.testing.assert_close(pasted[0, :, 2:4, 4:6], patches[canvas[0, 6]])


def test_live_frames_paste_new_cells_as_a_full_redraw_would(tokenizer: VQGAN) -> None:
    """Frame by frame, cells filled since the start show their code's patch, the rest the
    starting pixels, pending cells hatched and the newest outlined: what mark_progress draws
    over the whole picture, pasted cell by cell."""
    patches = code_patches(tokenizer)
    gen = torch.Generator().manual_seed(0)
    B, V = 2, TINY_VQGAN.codebook_size
    start = torch.full((B, 16), -1)
    start[:, :3] = torch.randint(0, V, (B, 3), generator=gen)  # kept cells, as in an edit
    pixels = torch.rand(B, 3, 8, 8, generator=gen)  # decoded from `start`
    live = LiveFrames(pixels, start, patches, GRID)
    canvas = start.clone()
    for step, pos in enumerate(torch.randperm(13, generator=gen) + 3):
        canvas[:, pos] = torch.randint(0, V, (B,), generator=gen)
        newest = torch.tensor([int(pos), -1 if step % 2 else int(pos)])
        expected_pixels = torch.where(
            (canvas != start).view(B, 1, 4, 1, 4, 1).expand(B, 1, 4, 2, 4, 2).reshape(B, 1, 8, 8),
            preview(canvas, patches, GRID),
            pixels,
        )
        expected = mark_progress(expected_pixels, canvas, newest, GRID)
        np.testing.assert_array_equal(live(canvas, newest), expected)
    # A frame handed out is the caller's: drawing the next one leaves it as it was.
    first = live(canvas, torch.tensor([3, 3]))
    shown = first.copy()
    live(canvas, torch.tensor([5, 5]))
    np.testing.assert_array_equal(first, shown)


def test_display_scale_brings_small_models_to_256_px() -> None:
    assert display_scale(64) == 4 and display_scale(256) == 1 and display_scale(512) == 1


def test_sheet_and_animation(tmp_path) -> None:
    panels = [np.full((8, 8, 3), v, np.uint8) for v in (0, 255)]
    image = sheet(panels, ["a", "b"], scale=2, footer="done")
    assert image.width == 2 * (16 + 8) + 8 and image.height > 16
    later = sheet(panels[::-1], ["a", "b"], scale=2, footer="done")
    path = save_animation([image, later], tmp_path / "run.webp")
    with Image.open(path) as animation:
        assert animation.format == "WEBP" and animation.n_frames == 2
