"""The benchmark harness (`python -m rar_demo.bench`), run here on CPU with the bundled model."""

from __future__ import annotations

import pytest

from rar_demo.bench import (
    CASES,
    ISA_FLAGS,
    OFFICIAL,
    PATHS,
    Case,
    cases,
    floor_seconds,
    main,
    measure,
    official_ref,
    profile,
)
from rar_demo.hub import random_models
from rar_demo.pipeline import DTYPES
from rar_demo.registry import MODEL_NAMES


def test_bench_cases_are_well_formed() -> None:
    for case in [c for device_cases in CASES.values() for c in device_cases] + [OFFICIAL]:
        assert case.path in PATHS and case.model in MODEL_NAMES, case
        assert case.dtype in DTYPES or (case.dtype == "int8" and case.path == "fast"), case


def test_the_official_case_runs_on_a_cpu_where_ref_is_set(tmp_path) -> None:
    assert official_ref({}) is None and OFFICIAL not in cases("cpu", None)
    assert OFFICIAL in cases("cpu", tmp_path) and OFFICIAL not in cases("cuda", tmp_path)


def test_a_bad_ref_stops_the_bench_with_one_line(tmp_path, monkeypatch) -> None:
    with pytest.raises(SystemExit, match="is not a directory"):
        official_ref({"REF": str(tmp_path / "missing")})
    with pytest.raises(SystemExit, match=r"no modeling/rar\.py"):
        official_ref({"REF": str(tmp_path)})
    # Before any case runs.
    monkeypatch.setenv("REF", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="is not a directory"):
        main(["--device", "cpu"])


def test_bench_measures_the_graph_path_streaming() -> None:
    """What `python -m rar_demo.bench --device cuda` runs, here on CPU with the bundled model."""
    case = Case("bundled", "torch", "fp32", "graph", 2, reps=2, order="raster", streaming=True)
    row = measure(case, "cpu")
    assert row["path"] == "graph" and row["streaming"] and row["order"] == "raster"
    assert row["batch"] == 2 and row["seconds_per_image"] > row["decode_seconds"] > 0
    assert row["tokens_per_s"] > 0 and row["peak_mem_mb"] > 0
    # CPU lines name the CPU and set the time beside the memory-bandwidth floor.
    assert row["cpu"] and set(row["isa"]) <= set(ISA_FLAGS) and row["read_gbs"] > 0
    assert 0 < row["floor_s"] < row["generate_seconds"]


def test_the_floor_counts_the_weights_every_step_reads() -> None:
    model, _ = random_models("rar_b")
    # About 170M of RAR-B's 261M parameters are read per step (adaLN precomputed): 680 MB fp32.
    floor = floor_seconds(model, "fp32", 256, bandwidth_gbs=1.0)
    assert 256 * 160e6 * 4 / 1e9 < floor < 256 * 180e6 * 4 / 1e9
    assert floor_seconds(model, "int8", 64, 1.0) == pytest.approx(floor / 16)


def test_profile_lists_the_costliest_operators_per_step() -> None:
    rows = profile(Case("bundled", "torch", "fp32", "graph", 1), "cpu", top=10)
    assert len(rows) == 10
    times = [r["us_per_step"] for r in rows]
    assert times == sorted(times, reverse=True) and times[0] > 0
    assert 0 < sum(r["share"] for r in rows) <= 1.001
    ops = {r["op"]: r for r in rows}
    # Every block runs a matmul or two per step: the profile counts steps, not whole runs.
    matmuls = [r for op, r in ops.items() if op in ("aten::addmm", "aten::mm", "aten::bmm")]
    assert matmuls and max(r["calls_per_step"] for r in matmuls) >= 6


def test_bench_measures_onnx(tmp_path, monkeypatch) -> None:
    """One bench measurement end to end, with the keys the README table is built from."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    row = measure(Case("bundled", "onnx", "int8", "fast", orders=2), "cpu")
    assert row["backend"] == "onnx" and row["dtype"] == "int8" and row["batch"] == 2
    assert row["seconds_per_image"] >= row["decode_seconds"] > 0
    assert row["tokens_per_s"] > 0 and row["peak_mem_mb"] > 0
    assert row["device"] == "cpu" and row["path"] == "fast" and row["orders"] == 2


def test_bench_measures_an_edit_on_the_cells_it_samples() -> None:
    row = measure(Case("bundled", "torch", "fp32", "fast", 2, edit="center"), "cpu")
    assert row["edit"] == "center" and row["generate_seconds"] > 0
    # 64 of 256 cells sampled: the floor is a quarter of a whole image's.
    model, _ = random_models("bundled")
    assert row["floor_s"] == pytest.approx(
        floor_seconds(model, "fp32", 64, row["read_gbs"]), rel=0.01
    )


@pytest.mark.parametrize(("backend", "path"), [("onnx", "fast"), ("torch", "graph")])
def test_bench_measures_parallel_decoding_on_every_runtime(
    backend, path, tmp_path, monkeypatch
) -> None:
    """Fewer steps than tokens on ONNX Runtime and the CUDA-graph path; the warm-up runs the
    whole schedule (a graph per round shape) and is reported."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    row = measure(Case("bundled", backend, "fp32", path, orders=2, steps=32), "cpu")
    assert row["steps"] == 32 and row["backend"] == backend and row["path"] == path
    assert row["warmup_s"] > 0 and row["generate_seconds"] > 0
