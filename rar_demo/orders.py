"""Generation orders for RAR: which grid cell is produced at each autoregressive step.

An order for an H x W token grid is a 1-D int64 tensor of length H*W where ``order[i]`` is the
raster position (row * W + col) generated at step i. RAR trains on random permutations, so at
sampling time any of these orders is valid; they exist to show how the order shapes the picture.
"""

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

OrderFn = Callable[[int, int, torch.Generator], torch.Tensor]


def _sort_cells(height: int, width: int, key: Callable[[int, int], tuple]) -> torch.Tensor:
    # Most orders are "cells sorted by some key"; sorted() is stable and the cells start in
    # raster order, so raster index breaks any remaining ties deterministically.
    cells = sorted(((r, c) for r in range(height) for c in range(width)), key=lambda rc: key(*rc))
    return torch.tensor([r * width + c for r, c in cells], dtype=torch.int64)


def _raster(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    return torch.arange(height * width)


def _random(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(height * width, generator=generator)


def _spiral(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    # Peel off the top row, then rotate what is left a quarter turn counter-clockwise so that
    # the next edge of a clockwise walk becomes the new top row.
    grid = torch.arange(height * width).view(height, width)
    edges = []
    while grid.numel():
        edges.append(grid[0])
        grid = grid[1:].rot90()
    return torch.cat(edges)


def _center_out(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    def key(r: int, c: int) -> tuple[int, float]:
        # Doubled offsets from the centre keep the distance an exact integer on even grids.
        dy, dx = 2 * r - (height - 1), 2 * c - (width - 1)
        return dy * dy + dx * dx, math.atan2(dy, dx)

    return _sort_cells(height, width, key)


def _zigzag(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    return _sort_cells(height, width, lambda r, c: (r, -c if r % 2 else c))


def _column(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    return _sort_cells(height, width, lambda r, c: (c, r))


def _diagonal(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    # Anti-diagonal r + c, each walked from its top-right end to its bottom-left end.
    return _sort_cells(height, width, lambda r, c: (r + c, r))


# Checkerboard sublattice order: (even, even), (odd, odd), (even, odd), (odd, even).
_CHECKER_PHASE = {(0, 0): 0, (1, 1): 1, (0, 1): 2, (1, 0): 3}


def _checkerboard(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    return _sort_cells(height, width, lambda r, c: (_CHECKER_PHASE[r % 2, c % 2], r, c))


# Insertion order is the display order: raster first, random second.
ORDERS: dict[str, OrderFn] = {
    "raster": _raster,
    "random": _random,
    "spiral": _spiral,
    "center-out": _center_out,
    "zigzag": _zigzag,
    "column": _column,
    "diagonal": _diagonal,
    "checkerboard": _checkerboard,
}
ORDER_NAMES: tuple[str, ...] = tuple(ORDERS)


def check_order_name(name: str) -> None:
    if name not in ORDERS:
        raise ValueError(f"unknown order {name!r}; valid names: {', '.join(ORDER_NAMES)}")


def make_order(name: str, height: int, width: int, seed: int | None = None) -> torch.Tensor:
    """Build the named order for a height x width grid; ``seed`` only affects "random"."""
    check_order_name(name)
    if height < 1 or width < 1:
        raise ValueError(f"grid must be at least 1x1, got {height}x{width}")
    generator = torch.Generator()
    if seed is None:
        generator.seed()  # a bare Generator() starts from a fixed seed, so reseed from entropy
    else:
        generator.manual_seed(seed)
    return ORDERS[name](height, width, generator)


def sample_orders(batch: int, length: int, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """(B, L) orders: each row a random permutation with probability `ratio`, else raster."""
    orders = torch.arange(length).repeat(batch, 1)
    for row in torch.nonzero(torch.rand(batch, generator=gen) < ratio).flatten():
        orders[row] = torch.randperm(length, generator=gen)
    return orders


def kept_first(orders: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Orders for an edit: the kept cells first (keep (L,) bool, in raster order), then the
    others in the order each row of `orders` (B, L) visits them."""
    kept = torch.nonzero(keep).flatten()
    rest = [row[~keep[row]] for row in orders]  # each row's own order, kept cells left out
    return torch.stack([torch.cat([kept, r]) for r in rest])


def validate_order(
    order: Sequence[int] | np.ndarray | torch.Tensor, num_positions: int
) -> torch.Tensor:
    """Check that ``order`` is a permutation of range(num_positions); return it as int64 on CPU."""
    order = torch.as_tensor(order)
    if order.ndim != 1:
        raise ValueError(f"order must be 1-D, got shape {tuple(order.shape)}")
    if len(order) != num_positions:
        raise ValueError(f"order must have {num_positions} entries, got {len(order)}")
    if order.dtype.is_floating_point or order.dtype.is_complex or order.dtype == torch.bool:
        raise ValueError(f"order must contain integers, got dtype {order.dtype}")
    order = order.to(device="cpu", dtype=torch.int64)
    out_of_range = order[(order < 0) | (order >= num_positions)]
    if len(out_of_range):
        bad = out_of_range[0].item()
        raise ValueError(f"order contains position {bad}, outside 0..{num_positions - 1}")
    counts = torch.bincount(order, minlength=num_positions)
    if (counts != 1).any():
        # Right length and in range, so a repeat always leaves some position out.
        duplicate = (counts > 1).nonzero()[0].item()
        missing = (counts == 0).nonzero()[0].item()
        raise ValueError(f"order repeats position {duplicate} and never visits {missing}")
    return order


def validate_orders(orders: torch.Tensor, num_positions: int) -> torch.Tensor:
    """`validate_order` for every row of a (B, L) batch of orders, which stays where it is."""
    if orders.ndim != 2:
        raise ValueError(f"orders must be (batch, positions), got shape {tuple(orders.shape)}")
    for i, row in enumerate(orders.cpu()):
        try:
            validate_order(row, num_positions)
        except ValueError as err:
            raise ValueError(f"row {i} of the orders: {err}") from None
    return orders


def step_index_map(
    order: Sequence[int] | np.ndarray | torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """(height, width) int64 map holding the step at which each cell is generated."""
    order = validate_order(order, height * width)
    steps = torch.empty_like(order)
    steps[order] = torch.arange(len(order))  # invert the permutation
    return steps.view(height, width)
