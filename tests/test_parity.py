"""Checkpoint-exact parity with the official RAR and MaskGIT-VQGAN code.

Every `*.safetensors` file in $RAR_PARITY_FIXTURES (default tests/fixtures/parity) is one
case produced by the reference implementation; everything (config, tolerance, which outputs)
is read from the file, so other fixture directories with other configs work unchanged.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, fixture_model, parity_fixtures, read_fixture

from rar_demo.backends import TorchExecutor
from rar_demo.backends.graphs import GraphExecutor
from rar_demo.config import RARConfig, SamplingConfig, VQGANConfig
from rar_demo.model import RAR, KVCache
from rar_demo.sampler import generate
from rar_demo.vqgan import VQGAN


def _cases(kind: str) -> list:
    return [pytest.param(p, id=p.stem) for p in parity_fixtures(kind)]


def _close(actual: torch.Tensor, expected: torch.Tensor, spec: dict) -> None:
    tol = spec["tolerance"]
    torch.testing.assert_close(actual, expected, atol=tol["atol"], rtol=tol["rtol"])


EXECUTORS = {
    "plain": lambda model: TorchExecutor(model, fast=False),  # the official algorithm
    "fast": TorchExecutor,  # adaLN precomputed
    "static": GraphExecutor,  # the CUDA-graph step (static shapes), run eagerly on CPU
}


def test_fixtures_present() -> None:
    assert list(FIXTURES.glob("*.safetensors")), f"no parity fixtures in {FIXTURES}"


@pytest.fixture(scope="module", params=_cases("rar"))
def rar_case(request):
    spec, t = read_fixture(request.param)
    model = fixture_model(RAR, RARConfig.from_dict(spec["config"]), t)
    labels = torch.where(t["class_dropped"], model.config.null_class, t["class_labels"])
    return spec, t, model, labels


def test_rar_teacher_forced_logits(rar_case) -> None:
    spec, t, model, labels = rar_case
    with torch.no_grad():
        logits = model(t["input_ids"], labels, t["orders"])
    _close(logits, t["train_logits"], spec)
    assert torch.equal(t["input_ids"].gather(1, t["orders"]), t["train_labels"])


@pytest.mark.parametrize("path", list(EXECUTORS))
def test_rar_kv_cached_steps(rar_case, path: str) -> None:
    """Feed the tokens one at a time in each sample's order; every step's logits must match."""
    spec, t, model, labels = rar_case
    executor = EXECUTORS[path](model)
    ids, orders = t["input_ids"], t["orders"]
    wanted = {int(k.split(".")[1]): v for k, v in t.items() if k.startswith("step_logits.")}
    assert wanted, "fixture has no step_logits"
    seq = ids.gather(1, orders)  # (B, L) in generation order
    cache = executor.new_cache(ids.shape[0])
    checked = []
    with torch.no_grad():
        logits = executor.prefill(cache, labels, orders[:, 0])
        if isinstance(cache, KVCache):  # the fast path must really be taken
            assert (cache.modulation is not None) == (path == "fast")
        for step in range(max(wanted) + 1):
            if step:
                logits = executor.decode_step(
                    cache, step, seq[:, step - 1], orders[:, step - 1], orders[:, step], labels
                )
            if step in wanted:
                _close(logits, wanted[step], spec)
                checked.append(step)
    assert checked == sorted(wanted)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("path", list(EXECUTORS))
def test_rar_greedy_generation(rar_case, path: str, dtype: torch.dtype) -> None:
    """Greedy tokens are exact in float32 too, the precision the fast paths run in."""
    _, t, model, _ = rar_case
    executor = EXECUTORS[path](copy.deepcopy(model).to(dtype))
    keys = [k for k in t if k.startswith("generated.")]
    assert keys, "fixture has no generated.* outputs"
    B, L = t["input_ids"].shape
    raster = torch.arange(L).expand(B, -1)
    for key in keys:
        scale, power = map(float, re.fullmatch(r"generated\.cfg([\d.]+)_pow([\d.]+)", key).groups())
        config = SamplingConfig(guidance_scale=scale, guidance_power=power, greedy=True)
        tokens = generate(executor, t["class_labels"], raster, config)
        assert torch.equal(tokens, t[key]), f"{key}: {(tokens != t[key]).sum()} tokens differ"


@pytest.mark.parametrize("path", _cases("vqgan"))
def test_vqgan_decode_and_encode(path: Path) -> None:
    spec, t = read_fixture(path)
    model = fixture_model(VQGAN, VQGANConfig.from_dict(spec["config"]), t)
    _close(model.decode(t["codes"]), t["decoded"], spec)
    assert torch.equal(model.encode(t["images"]), t["encoded"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rar_greedy_generation_replayed_from_cuda_graphs(rar_case) -> None:
    """The GPU fast path in fp32: every step replayed from a captured CUDA graph."""
    _, t, model, _ = rar_case
    executor = GraphExecutor(copy.deepcopy(model).to("cuda", torch.float32))
    B, L = t["input_ids"].shape
    raster = torch.arange(L).expand(B, -1)
    for key in [k for k in t if k.startswith("generated.")]:
        scale, power = map(float, re.fullmatch(r"generated\.cfg([\d.]+)_pow([\d.]+)", key).groups())
        config = SamplingConfig(guidance_scale=scale, guidance_power=power, greedy=True)
        for _ in range(2):  # capture, then replay
            tokens = generate(executor, t["class_labels"], raster, config)
            assert torch.equal(tokens, t[key]), f"{key}: {(tokens != t[key]).sum()} tokens differ"
    assert all(d.graph is not None for pool in executor._pool.values() for d in pool)
