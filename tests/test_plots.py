"""Run figures: order heatmaps and per-step curves."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from rar_demo.orders import make_order
from rar_demo.plots import order_heatmaps, step_curves


def test_order_heatmaps_show_each_orders_steps() -> None:
    names = ["raster", "spiral"]
    orders = torch.stack([make_order(n, 4, 4) for n in names])
    fig = order_heatmaps(names, orders, (4, 4))
    assert isinstance(fig, Figure)
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in heatmaps] == names
    raster = heatmaps[0].images[0].get_array()
    assert raster.tolist() == torch.arange(16).view(4, 4).tolist()


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


def test_an_edits_kept_cells_are_masked_out_of_the_heatmap() -> None:
    orders = torch.stack([make_order("raster", 4, 4)])
    fig = order_heatmaps(["raster"], orders, (4, 4), given=6)
    (heatmap,) = [ax for ax in fig.axes if ax.images]
    shown = heatmap.images[0].get_array()
    assert shown.mask.flatten().tolist() == [True] * 6 + [False] * 10
    assert heatmap.images[0].get_clim() == (6, 15) and "6 cells kept" in fig._suptitle.get_text()
