"""Figures for a run: when each order visits each cell, and how sure the model was at each step.

Figures are built with matplotlib's object API on an Agg canvas, never through pyplot: pyplot
keeps global state, and a server draws figures for several requests at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from .orders import step_index_map


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def order_heatmaps(
    names: Sequence[str], orders: Tensor, grid: tuple[int, int], given: int = 0
) -> Figure:
    """One heatmap per order: the step at which each cell of the grid is generated.

    orders (B, L): orders[b, i] is the raster position generated at step i. An edit's `given`
    kept cells (its first steps) are drawn grey: they come from the picture, not the sampler.
    """
    last = orders.shape[1] - 1
    fig = _figure(2.4 * len(names) + 1.0, 2.8)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    for ax, name, order in zip(axes, names, orders, strict=True):
        steps = step_index_map(order, *grid).numpy()
        shown = np.ma.masked_less(steps, given)  # the kept cells
        image = ax.imshow(shown, cmap=cmap, vmin=given, vmax=last)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes.tolist(), label="step", shrink=0.85)
    kept = f" (grey: the {given} cells kept)" if given else ""
    fig.suptitle(f"Generation order: the step at which each cell is generated{kept}")
    return fig


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
    fig = _figure(7.5, 4.6)
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
    fig.legend(handles, labels, loc="outside lower center", ncols=len(names), frameon=False)
    for ax in (ax_p, ax_h):
        ax.grid(alpha=0.3)
    return fig
