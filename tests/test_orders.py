import numpy as np
import pytest
import torch

from rar_demo.orders import (
    ORDER_NAMES,
    ORDERS,
    make_order,
    sample_orders,
    step_index_map,
    validate_order,
    validate_orders,
)

GRIDS = [(16, 16), (5, 7), (7, 5), (1, 6), (6, 1), (1, 1)]


def test_names_match_registry_in_display_order():
    assert set(ORDER_NAMES) == set(ORDERS)
    assert ORDER_NAMES[:2] == ("raster", "random")
    assert set(ORDER_NAMES) == {
        "raster",
        "random",
        "spiral",
        "center-out",
        "zigzag",
        "column",
        "diagonal",
        "checkerboard",
    }


@pytest.mark.parametrize("name", ORDER_NAMES)
@pytest.mark.parametrize(("height", "width"), GRIDS)
def test_every_order_is_a_permutation(name, height, width):
    order = make_order(name, height, width, seed=0)
    assert order.dtype == torch.int64
    assert order.shape == (height * width,)
    assert torch.equal(order.sort().values, torch.arange(height * width))


@pytest.mark.parametrize(("height", "width"), GRIDS)
def test_raster_is_arange(height, width):
    assert torch.equal(make_order("raster", height, width), torch.arange(height * width))


def test_column_is_column_major():
    expected = torch.arange(5 * 7).view(5, 7).T.reshape(-1)
    assert torch.equal(make_order("column", 5, 7), expected)


def test_zigzag_reverses_odd_rows():
    grid = make_order("zigzag", 5, 7).view(5, 7)
    raster = torch.arange(5 * 7).view(5, 7)
    for row in range(5):
        expected = raster[row].flip(0) if row % 2 else raster[row]
        assert torch.equal(grid[row], expected)


def test_spiral_small_grid():
    assert make_order("spiral", 3, 3).tolist() == [0, 1, 2, 5, 8, 7, 6, 3, 4]
    assert make_order("spiral", 2, 3).tolist() == [0, 1, 2, 5, 4, 3]


def test_spiral_starts_with_first_row_then_right_column():
    order = make_order("spiral", 16, 16)
    assert order[:16].tolist() == list(range(16))
    assert order[16:31].tolist() == [r * 16 + 15 for r in range(1, 16)]


def test_center_out_starts_at_centre_and_ends_at_corner():
    order = make_order("center-out", 16, 16)
    assert set(order[:4].tolist()) == {7 * 16 + 7, 7 * 16 + 8, 8 * 16 + 7, 8 * 16 + 8}
    assert order[-1].item() in {0, 15, 240, 255}


def test_center_out_odd_grid_starts_at_centre_cell():
    assert make_order("center-out", 5, 5)[0].item() == 12


def test_center_out_distance_never_decreases():
    order = make_order("center-out", 5, 7)
    rows, cols = order // 7, order % 7
    dist = (rows - 2.0) ** 2 + (cols - 3.0) ** 2
    assert (dist.diff() >= 0).all()


def test_diagonal_walks_anti_diagonals():
    order = make_order("diagonal", 4, 4)
    assert order[0].item() == 0
    assert set(order[1:3].tolist()) == {1, 4}
    diag = order // 4 + order % 4
    assert (diag.diff() >= 0).all()


def test_checkerboard_visits_sublattices_in_turn():
    order = make_order("checkerboard", 16, 16)
    rows, cols = order // 16, order % 16
    parities = [(0, 0), (1, 1), (0, 1), (1, 0)]
    for quarter, (row_parity, col_parity) in enumerate(parities):
        chunk = slice(quarter * 64, (quarter + 1) * 64)
        assert (rows[chunk] % 2 == row_parity).all()
        assert (cols[chunk] % 2 == col_parity).all()
    # Within a sublattice the cells come in raster order.
    assert (order[:64].diff() > 0).all()


def test_random_is_seeded():
    first = make_order("random", 16, 16, seed=123)
    assert torch.equal(first, make_order("random", 16, 16, seed=123))
    assert not torch.equal(first, make_order("random", 16, 16, seed=124))
    assert not torch.equal(first, torch.arange(256))


def test_random_without_seed_is_not_fixed():
    orders = {tuple(make_order("random", 16, 16).tolist()) for _ in range(3)}
    assert len(orders) > 1


def test_make_order_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown order 'hilbert'") as info:
        make_order("hilbert", 4, 4)
    assert all(name in str(info.value) for name in ORDER_NAMES)


def test_make_order_rejects_empty_grid():
    with pytest.raises(ValueError, match="at least 1x1"):
        make_order("raster", 0, 4)


@pytest.mark.parametrize(
    "order",
    [[2, 0, 1], (2, 0, 1), np.array([2, 0, 1], dtype=np.int32), torch.tensor([2, 0, 1])],
)
def test_validate_order_accepts_sequences(order):
    result = validate_order(order, 3)
    assert result.dtype == torch.int64
    assert result.device.type == "cpu"
    assert result.tolist() == [2, 0, 1]


@pytest.mark.parametrize(
    ("order", "message"),
    [
        ([0, 1, 1, 3], "repeats position 1 and never visits 2"),
        ([0, 1, 2], "must have 4 entries, got 3"),
        ([0, 1, 2, 4], "position 4, outside 0..3"),
        ([0, -1, 2, 3], "position -1, outside 0..3"),
        ([[0, 1], [2, 3]], r"must be 1-D, got shape \(2, 2\)"),
        ([0.0, 1.0, 2.0, 3.0], "must contain integers"),
    ],
)
def test_validate_order_rejects_bad_orders(order, message):
    with pytest.raises(ValueError, match=message):
        validate_order(order, 4)


@pytest.mark.parametrize("name", ORDER_NAMES)
def test_step_index_map_inverts_order(name):
    order = make_order(name, 5, 7, seed=0)
    steps = step_index_map(order, 5, 7)
    assert steps.shape == (5, 7)
    assert steps.dtype == torch.int64
    flat = steps.reshape(-1)
    assert torch.equal(flat[order], torch.arange(35))
    assert torch.equal(order[flat], torch.arange(35))


def test_step_index_map_of_spiral():
    assert step_index_map([0, 1, 2, 5, 8, 7, 6, 3, 4], 3, 3).tolist() == [
        [0, 1, 2],
        [7, 8, 3],
        [6, 5, 4],
    ]


def test_sample_orders_by_ratio() -> None:
    gen = torch.Generator().manual_seed(0)
    raster = sample_orders(8, 16, 0.0, gen)
    assert torch.equal(raster, torch.arange(16).expand(8, -1))
    shuffled = sample_orders(8, 16, 1.0, gen)
    assert torch.equal(shuffled.sort(1).values, raster)
    assert not torch.equal(shuffled, raster)


def test_validate_orders_checks_every_row() -> None:
    good = torch.stack([torch.arange(4), torch.arange(4).flip(0)])
    assert validate_orders(good, 4) is good
    with pytest.raises(ValueError, match=r"row 1 of the orders: order repeats position 0"):
        validate_orders(torch.tensor([[0, 1, 2, 3], [0, 0, 1, 2]]), 4)
    with pytest.raises(ValueError, match=r"orders must be \(batch, positions\)"):
        validate_orders(torch.arange(4), 4)
