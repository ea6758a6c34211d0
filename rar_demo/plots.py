"""Figures for a run: when each order visits each cell, and how sure the model was at each step.

The order heatmaps are drawn with PIL (they are images). The curves are a matplotlib figure,
built with the object API on an Agg canvas, never through pyplot: pyplot keeps global state,
and a server draws figures for several requests at once. Its layout is fixed by hand (margins
in inches) rather than solved by a layout engine, which cost more than drawing the figure.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from torch import Tensor

from .orders import step_index_map
from .render import font

HEATMAP_SIZE = 128  # px, each order's map (a whole number of pixels a cell)
HEATMAP_PAD = 12  # px around and between the maps
HEATMAP_TOP = 46  # px above the maps: the heading, then each map's name
KEPT_GREY = (211, 211, 211)  # an edit's kept cells


def _figure(
    width: float, height: float, left: float, right: float, top: float, bottom: float
) -> Figure:
    """A width x height inch figure whose axes keep the given margins (inches)."""
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height
    )
    return fig


def png(plot: Figure | Image.Image) -> bytes:
    """A figure or image as PNG bytes."""
    with io.BytesIO() as out:
        if isinstance(plot, Image.Image):
            plot.save(out, format="png")
        else:
            plot.savefig(out, format="png")
        return out.getvalue()


def order_heatmaps(
    names: Sequence[str], orders: Tensor, grid: tuple[int, int], given: int = 0
) -> Image.Image:
    """One heatmap per order: the step at which each cell of the grid is generated (viridis,
    dark = early), with a colour bar. Drawn with PIL: a few milliseconds, where a matplotlib
    figure took a few hundred beside the sampler.

    orders (B, L): orders[b, i] is the raster position generated at step i. An edit's `given`
    kept cells (its first steps) are drawn grey: they come from the picture, not the sampler.
    """
    h, w = grid
    last = orders.shape[1] - 1
    cell = max(2, HEATMAP_SIZE // max(h, w))
    lut = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    pad, bar, name_y = HEATMAP_PAD, 14, 26  # px: colour bar width, each map's name
    maps = []
    for order in orders:
        steps = step_index_map(order, h, w).numpy()
        shade = ((steps - given).clip(0) * 255 // max(1, last - given)).astype(np.int64)
        rgb = np.where((steps < given)[..., None], KEPT_GREY, lut[shade])
        maps.append(rgb.repeat(cell, 0).repeat(cell, 1).astype(np.uint8))
    side_h, side_w = h * cell, w * cell
    kept = f" (grey: the {given} cells kept)" if given else ""
    heading = f"Generation order: the step at which each cell is made{kept}"
    width = pad + len(names) * (side_w + pad) + bar + 60
    width = max(width, round(font(14).getlength(heading)) + 2 * pad)
    out = Image.new("RGB", (width, HEATMAP_TOP + side_h + pad), "white")
    draw = ImageDraw.Draw(out)
    draw.text((pad, 5), heading, "black", font(14))
    top = HEATMAP_TOP
    for k, (name, rgb) in enumerate(zip(names, maps, strict=True)):
        x = pad + k * (side_w + pad)
        draw.text((x, name_y), name, "black", font(13))
        out.paste(Image.fromarray(rgb), (x, top))
    x = pad + len(names) * (side_w + pad)
    ramp = lut[np.linspace(255, 0, side_h).astype(np.int64)][:, None].repeat(bar, 1)
    out.paste(Image.fromarray(ramp), (x, top))
    draw.text((x + bar + 4, top - 2), f"step {last}", "black", font(12))
    draw.text((x + bar + 4, top + side_h - 14), f"step {given}", "black", font(12))
    return out


def _trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values at every step (fewer at the start, so no edge dip)."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def step_curves(names: Sequence[str], probs: Tensor, entropy: Tensor, window: int = 8) -> Figure:
    """Probability of the chosen token and entropy of the distribution, per step, per order.

    probs, entropy (L, B). Raw values are drawn faintly under a trailing mean over `window`
    steps: single steps are too noisy to compare orders by.
    """
    columns = len(names) if len(names) <= 2 else 2  # long labels: at most two to a row
    rows = -(-len(names) // columns)
    fig = _figure(7.5, 4.4 + 0.25 * rows, left=0.75, right=0.2, top=0.45, bottom=0.7 + 0.25 * rows)
    ax_p, ax_h = fig.subplots(2, 1, sharex=True)
    steps = np.arange(1, probs.shape[0] + 1)
    for b, name in enumerate(names):
        color = f"C{b}"
        for ax, series in ((ax_p, probs[:, b]), (ax_h, entropy[:, b])):
            values = series.to(torch.float64).numpy()
            ax.plot(steps, values, color=color, alpha=0.2, linewidth=0.8)
            ax.plot(steps, _trailing_mean(values, window), color=color, linewidth=1.8, label=name)
    ax_p.set_ylabel("p(chosen token)")
    ax_p.set_ylim(bottom=0)
    ax_h.set_ylabel("entropy (nats)")
    ax_h.set_xlabel(f"step (bold: mean of the last {window} steps)")
    ax_h.set_xlim(1, len(steps))
    fig.suptitle("How sure the model was, step by step")
    # Outside the axes: inside, it covered the curves' first steps.
    handles, labels = ax_p.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=columns, frameon=False)
    for ax in (ax_p, ax_h):
        ax.grid(alpha=0.3)
    return fig
