"""The ONNX export and its ONNX Runtime executor against the PyTorch model.

The generator is the parity fixture's (tests/fixtures/parity, see test_parity.py) in fp32,
so the exported graphs are checked against the official model's outputs too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import fixture_model, parity_fixtures, read_fixture

from rar_demo.backends import TorchExecutor, onnx_export
from rar_demo.backends.onnx import (
    CACHE_GROWTH,
    QUANTIZED,
    STEP_FILE,
    OnnxDecoder,
    OnnxExecutor,
    ensure_export,
    int8_name,
)
from rar_demo.backends.onnx_export import export_all
from rar_demo.config import RARConfig, SamplingConfig, VQGANConfig
from rar_demo.model import (
    PREFIX,
    RAR,
    cat_inputs,
    decode_inputs,
    prefill_inputs,
    query_inputs,
)
from rar_demo.orders import kept_first
from rar_demo.pipeline import load_pipeline
from rar_demo.sampler import generate
from rar_demo.vqgan import VQGAN

ATOL = 1e-4


def _fixture(kind: str) -> tuple[dict, dict[str, torch.Tensor]]:
    return read_fixture(parity_fixtures(kind)[0])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small models: a second thread only adds contention (ONNX Runtime follows torch's count).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def case(tmp_path_factory, _one_thread):
    spec, t = _fixture("rar")
    model = fixture_model(RAR, RARConfig.from_dict(spec["config"]), t, torch.float32)
    _, v = _fixture("vqgan")
    tokenizer = fixture_model(
        VQGAN, VQGANConfig.from_dict(_fixture("vqgan")[0]["config"]), v, torch.float32
    )
    out = tmp_path_factory.mktemp("onnx")
    export_all(model, tokenizer, out, int8=True)
    labels = torch.where(t["class_dropped"], model.config.null_class, t["class_labels"])
    return t, model, tokenizer, labels, out


def _teacher_forced_steps(executor, t: dict, labels: torch.Tensor) -> Iterator[torch.Tensor]:
    """The (B, V) logits of each step, feeding the fixture's tokens in each sample's order."""
    orders = t["orders"]
    seq = t["input_ids"].gather(1, orders)  # (B, L) in generation order
    cache = executor.new_cache(len(labels))
    yield executor.prefill(cache, labels, orders[:, 0])
    for step in range(1, orders.shape[1]):
        args = seq[:, step - 1], orders[:, step - 1], orders[:, step], labels
        yield executor.decode_step(cache, step, *args)


def _teacher_forced(executor, t: dict, labels: torch.Tensor) -> torch.Tensor:
    """(L, B, V) logits of every step."""
    return torch.stack(list(_teacher_forced_steps(executor, t, labels)))


@torch.inference_mode()
def test_decode_step_matches_torch(case) -> None:
    t, model, _, labels, out = case
    onnx = _teacher_forced(OnnxExecutor(out), t, labels)
    torch.testing.assert_close(onnx, _teacher_forced(model, t, labels), atol=ATOL, rtol=0)
    for key in (k for k in t if k.startswith("step_logits.")):
        step = int(key.split(".")[1])
        torch.testing.assert_close(onnx[step], t[key].float(), atol=ATOL, rtol=0)


@torch.inference_mode()
def test_generations_stepped_in_turn_keep_their_own_buffers(case) -> None:
    """A cache holds its round's bound buffers: two generations on one executor, stepped in
    turn (as two app users' are), give what each gives alone."""
    t, _, _, labels, out = case
    executor = OnnxExecutor(out)
    other = {key: t[key].flip(0) for key in ("orders", "input_ids")}
    alone = [_teacher_forced(executor, t, labels), _teacher_forced(executor, other, labels.flip(0))]
    turns = list(
        zip(
            _teacher_forced_steps(executor, t, labels),
            _teacher_forced_steps(executor, other, labels.flip(0)),
            strict=True,
        )
    )
    for i, expected in enumerate(alone):
        assert torch.equal(torch.stack([turn[i] for turn in turns]), expected)


@torch.inference_mode()
def test_the_cache_grows_as_its_slots_fill(case) -> None:
    """The step reads the cache it is given, unwritten slots masked: the executor's holds the
    slots written so far, rounded up to CACHE_GROWTH (the test above: the same logits)."""
    t, model, _, labels, out = case
    executor = OnnxExecutor(out)
    seq, orders = t["input_ids"][:, :40], t["orders"][:, :41]
    cache = executor.new_cache(len(labels))
    executor.prefill(cache, labels, orders[:, 0])
    lengths = [cache.k.shape[3]]
    for step in range(1, 40):  # slots 0 .. step + 1 written
        args = seq[:, step - 1], orders[:, step - 1], orders[:, step], labels
        executor.decode_step(cache, step, *args)
        lengths.append(cache.k.shape[3])
    assert lengths == [-(-(step + 2) // CACHE_GROWTH) * CACHE_GROWTH for step in range(40)]
    full = model.config.image_seq_len + 1
    executor.decode_round(
        cache, full - 2, decode_inputs(seq[:, :2], orders[:, :2], orders[:, 1:3]), 0, labels
    )
    assert cache.k.shape[3] == cache.v.shape[3] == full  # never past a generation's length


def test_greedy_tokens_match_torch(case) -> None:
    t, model, _, _, out = case
    executor = OnnxExecutor(out)
    B, L = t["input_ids"].shape
    raster = torch.arange(L).expand(B, -1)
    for scale in (0.0, 4.0):
        config = SamplingConfig(guidance_scale=scale, guidance_power=2.75, greedy=True)
        expected = generate(TorchExecutor(model), t["class_labels"], raster, config)
        assert torch.equal(generate(executor, t["class_labels"], raster, config), expected)
    key = "generated.cfg4_pow2.75"
    assert torch.equal(expected, t[key]), "fp32 torch no longer matches the official greedy run"


def test_mixed_orders_batch(case) -> None:
    """Per-sample positions: one batch of different orders equals each order run alone."""
    _, model, _, _, out = case
    executor = OnnxExecutor(out)
    L = model.config.image_seq_len
    orders = torch.stack([torch.arange(L), torch.arange(L).flip(0), torch.randperm(L)])
    config = SamplingConfig(guidance_scale=3.0, greedy=True)
    together = generate(executor, torch.tensor([5, 5, 5]), orders, config)
    alone = [generate(executor, torch.tensor([5]), o[None], config) for o in orders]
    assert torch.equal(together, torch.cat(alone))


def _onnx_sequential(executor, t: dict, labels: torch.Tensor, orders, context: int, target):
    """Prefill and `context` fixture tokens one step each, the last told `target`: (its
    logits, the cache)."""
    seq = t["input_ids"].gather(1, orders)
    cache = executor.new_cache(len(labels))
    logits = executor.prefill(cache, labels, orders[:, 0] if context else target)
    for i in range(context):
        nxt = orders[:, i + 1] if i + 1 < context else target
        logits = executor.decode_step(cache, i + 1, seq[:, i], orders[:, i], nxt, labels)
    return logits, cache


@torch.inference_mode()
def test_a_round_of_queries_equals_sequential_decodes(case) -> None:
    """Parallel decoding on the step graph: the real inputs and queries of one run give each
    query's position the logits a sequential decode gives it, and write the cache as that
    decode does (the queries write nothing)."""
    t, model, _, labels, out = case
    executor = OnnxExecutor(out)
    B, L = t["input_ids"].shape
    orders = torch.stack(
        [torch.randperm(L, generator=torch.Generator().manual_seed(b)) for b in range(B)]
    )
    seq = t["input_ids"].gather(1, orders)
    n = 4
    cache = executor.new_cache(B)
    real = prefill_inputs(model.config, labels, orders[:, 0])
    first = executor.decode_round(
        cache, 0, cat_inputs(real, query_inputs(real, orders[:, 1:3])), 2, labels
    )
    for j in range(3):
        expected, _ = _onnx_sequential(executor, t, labels, orders, 0, orders[:, j])
        torch.testing.assert_close(first[:, j], expected, atol=1e-5, rtol=0)
    real = decode_inputs(seq[:, :n], orders[:, :n], orders[:, 1 : n + 1])
    second = executor.decode_round(
        cache, PREFIX, cat_inputs(real, query_inputs(real, orders[:, n + 1 : n + 3])), 2, labels
    )
    for j in range(3):
        expected, sequential = _onnx_sequential(executor, t, labels, orders, n, orders[:, n + j])
        torch.testing.assert_close(second[:, j], expected, atol=1e-5, rtol=0)
        if j == 0:  # the order the real inputs follow: the last one told o[n]
            torch.testing.assert_close(cache.k, sequential.k, atol=1e-5, rtol=0)
            torch.testing.assert_close(cache.v, sequential.v, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [1, 5, 64])
def test_parallel_tokens_match_torch(case, steps: int) -> None:
    """Several tokens per step (and one, and an edit's prefill in one round): the same tokens
    as the torch runtime."""
    t, model, _, _, out = case
    executor = OnnxExecutor(out)
    B, L = t["input_ids"].shape
    orders = torch.stack(
        [torch.randperm(L, generator=torch.Generator().manual_seed(b)) for b in range(B)]
    )
    config = SamplingConfig(guidance_scale=3.0, greedy=True, steps=min(steps, L))
    expected = generate(TorchExecutor(model), t["class_labels"], orders, config)
    assert torch.equal(generate(executor, t["class_labels"], orders, config), expected)
    keep = torch.zeros(L, dtype=torch.bool)
    keep[: L // 3] = True
    prompt = torch.where(keep, t["input_ids"], -1)
    edit_orders = kept_first(orders, keep)
    expected = generate(TorchExecutor(model), t["class_labels"], edit_orders, config, 0, prompt)
    got = generate(executor, t["class_labels"], edit_orders, config, 0, prompt)
    assert torch.equal(got, expected) and torch.equal(got[:, keep], prompt[:, keep])


@torch.inference_mode()
def test_vqgan_decoder_matches_torch(case) -> None:
    _, _, tokenizer, _, out = case
    _, v = _fixture("vqgan")
    pixels = OnnxDecoder(out).decode(v["codes"])
    torch.testing.assert_close(pixels, tokenizer.decode(v["codes"]), atol=ATOL, rtol=0)
    torch.testing.assert_close(pixels, v["decoded"].float(), atol=ATOL, rtol=0)


@torch.inference_mode()
def test_int8_keeps_the_logits(case) -> None:
    """int8 weights move the logits a little, not the distribution: same shape, close argmax."""
    t, _, _, labels, out = case
    assert all((out / int8_name(f)).is_file() for f in QUANTIZED)
    fp32 = _teacher_forced(OnnxExecutor(out), t, labels).flatten(0, 1)
    int8 = _teacher_forced(OnnxExecutor(out, int8=True), t, labels).flatten(0, 1)
    assert not torch.equal(int8, fp32)  # really quantized
    assert F.cosine_similarity(int8, fp32, dim=-1).min() > 0.99
    assert (int8.argmax(-1) == fp32.argmax(-1)).float().mean() > 0.9


def test_export_is_cached_by_weights(case, tmp_path, monkeypatch) -> None:
    _, model, tokenizer, _, _ = case
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = ensure_export("tiny", model, tokenizer)
    assert first.parent == tmp_path / "rar_demo" / "onnx"
    stamp = (first / STEP_FILE).stat().st_mtime_ns
    assert ensure_export("tiny", model, tokenizer) == first
    assert (first / STEP_FILE).stat().st_mtime_ns == stamp  # found, not exported again
    assert not any((first / int8_name(f)).exists() for f in QUANTIZED)
    assert ensure_export("tiny", model, tokenizer, int8=True) == first  # quantized on demand
    assert all((first / int8_name(f)).is_file() for f in QUANTIZED)
    with torch.no_grad():
        model.lm_head.bias.add_(1.0)
    try:
        assert ensure_export("tiny", model, tokenizer) != first
    finally:
        with torch.no_grad():
            model.lm_head.bias.sub_(1.0)
    assert [p.name for p in first.parent.iterdir() if ".tmp" in p.name] == []


def test_an_int8_export_that_loses_the_race_to_an_fp32_one_still_quantizes(
    case, tmp_path, monkeypatch
) -> None:
    """Two processes export the same weights; the other one, asked for fp32 only, moves its
    export into place while this one (asked for int8) is still exporting."""
    _, model, tokenizer, _, _ = case
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def other_process_first(*args, **kwargs) -> None:
        with monkeypatch.context() as m:
            m.setattr(onnx_export, "export_all", export_all)
            ensure_export("tiny", model, tokenizer)  # fp32 only, in place first
        export_all(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "export_all", other_process_first)
    out = ensure_export("tiny", model, tokenizer, int8=True)
    assert all((out / int8_name(f)).is_file() for f in QUANTIZED)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # its own copy removed


def test_bundled_pipeline_on_onnx(tmp_path, monkeypatch) -> None:
    """The app's entry point: same greedy images from both backends."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    torch_pipe = load_pipeline("bundled")
    onnx_pipe = load_pipeline("bundled", backend="onnx")
    greedy = torch_pipe.sampling.with_(greedy=True)
    finals = []
    for pipe in (torch_pipe, onnx_pipe):
        *_, last = pipe.stream(0, pipe.orders(["raster", "spiral"], 0), seed=0, sampling=greedy)
        finals.append((last.canvas, pipe.decode(last.canvas)))
    assert torch.equal(finals[0][0], finals[1][0])
    # Trained weights are larger than the fixture's: allow a quarter of an 8-bit level.
    torch.testing.assert_close(finals[0][1], finals[1][1], atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="backend"):
        load_pipeline("bundled", backend="tensorrt")
    with pytest.raises(ValueError, match="int8"):  # it changes the small model's pictures
        load_pipeline("bundled", backend="onnx", int8=True)


@pytest.mark.slow
def test_a_cached_export_runs_without_importing_the_exporter(tmp_path) -> None:
    """Start-up: `import onnx` alone took 1.4 s on a 2-core AMD EPYC; a process that finds its
    export cached (int8 included) must not pay for it."""
    code = (
        "import sys, torch; from conftest import TINY_RAR, TINY_VQGAN; "
        "from rar_demo.model import RAR; from rar_demo.vqgan import VQGAN; "
        "from rar_demo.backends.onnx import ensure_export, open_export; "
        "torch.manual_seed(0); model, tokenizer = RAR(TINY_RAR).eval(), VQGAN(TINY_VQGAN).eval(); "
        "open_export(ensure_export('tiny', model, tokenizer, int8=True), int8=True); "
        "print(sorted({'onnx', 'onnxruntime.quantization'} & set(sys.modules)))"
    )
    tests = Path(__file__).resolve().parent
    path = os.pathsep.join(filter(None, [str(tests), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "PYTHONPATH": path}

    def imported() -> str:
        run = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=tests.parent,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    assert imported() == "['onnx', 'onnxruntime.quantization']"  # exported: it needed them
    assert imported() == "[]"  # found in the cache
