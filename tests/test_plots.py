"""Run figures: order heatmaps and per-step curves."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from rar_demo.orders import make_order, step_index_map
from rar_demo.plots import (
    HEATMAP_PAD,
    HEATMAP_SIZE,
    HEATMAP_TOP,
    KEPT_GREY,
    order_heatmaps,
    png,
    step_curves,
)


def _cell_colours(image: Image.Image, k: int, grid: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) the colour at the centre of each cell of the k-th order's map."""
    h, w = grid
    cell = HEATMAP_SIZE // max(h, w)
    x0 = HEATMAP_PAD + k * (w * cell + HEATMAP_PAD)
    pixels = np.asarray(image)
    ys = HEATMAP_TOP + cell * np.arange(h) + cell // 2
    xs = x0 + cell * np.arange(w) + cell // 2
    return pixels[ys][:, xs]


def _viridis(steps: np.ndarray, first: int, last: int) -> np.ndarray:
    lut = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    return lut[(steps - first) * 255 // (last - first)]


def test_order_heatmaps_show_each_orders_steps() -> None:
    names = ["raster", "spiral"]
    orders = torch.stack([make_order(n, 4, 4) for n in names])
    image = order_heatmaps(names, orders, (4, 4))
    assert isinstance(image, Image.Image)
    for k, order in enumerate(orders):
        steps = step_index_map(order, 4, 4).numpy()
        assert (_cell_colours(image, k, (4, 4)) == _viridis(steps, 0, 15)).all(), names[k]
    assert png(image).startswith(b"\x89PNG")


def test_step_curves_draw_every_order_and_keep_the_legend_off_the_curves() -> None:
    probs = torch.rand(32, 3)
    entropy = torch.rand(32, 3)
    fig = step_curves(["a", "b", "c"], probs, entropy)
    ax_p, ax_h = fig.axes[:2]
    assert len(ax_p.lines) == len(ax_h.lines) == 6  # raw and smoothed per order
    assert ax_p.get_xlim()[1] == 32 or ax_h.get_xlim()[1] == 32
    fig.canvas.draw()
    legend = fig.legends[0] if fig.legends else ax_p.get_legend()
    box = legend.get_window_extent()
    for ax in (ax_p, ax_h):
        assert not box.overlaps(ax.get_window_extent()), "the legend covers the curves"


def test_an_edits_kept_cells_are_grey_and_the_colours_span_the_generated_steps() -> None:
    orders = torch.stack([make_order("raster", 4, 4)])
    image = order_heatmaps(["raster"], orders, (4, 4), given=6)
    colours = _cell_colours(image, 0, (4, 4)).reshape(16, 3)
    assert (colours[:6] == KEPT_GREY).all()
    assert (colours[6:] == _viridis(np.arange(6, 16), 6, 15)).all()
