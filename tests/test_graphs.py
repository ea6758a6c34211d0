"""The CUDA-graph executor: its pool of static decoders, torch.compile, bf16, and (where a GPU
is present) graph capture. That its tokens equal the other paths' is checked by the sampler
and parity tests, which run on every executor."""

from __future__ import annotations

import gc
import itertools

import pytest
import torch
from conftest import TINY_RAR
from torch import nn

from rar_demo.backends import TorchExecutor
from rar_demo.backends.graphs import CAPTURE_AFTER, GraphExecutor
from rar_demo.config import SamplingConfig
from rar_demo.model import RAR
from rar_demo.orders import kept_first
from rar_demo.pipeline import load_pipeline
from rar_demo.registry import spec
from rar_demo.sampler import generate, stream, tokens_per_step

L = TINY_RAR.image_seq_len
SAMPLE = SamplingConfig(guidance_scale=3.0)  # guided: every decode step runs 2 rows per image
GREEDY = SamplingConfig(guidance_scale=3.0, greedy=True)


def _model(dtype: torch.dtype = torch.float32, device: str = "cpu") -> RAR:
    torch.manual_seed(0)
    model = RAR(TINY_RAR).eval()
    with torch.no_grad():
        for p in model.parameters():
            nn.init.normal_(p, std=0.1)
    return model.to(device, dtype)


def _orders(n: int) -> torch.Tensor:
    return torch.stack(
        [torch.randperm(L, generator=torch.Generator().manual_seed(i)) for i in range(n)]
    )


def _pooled(executor: GraphExecutor) -> dict[tuple[int, int], int]:
    return {key: len(pool) for key, pool in executor._pool.items() if pool}


def test_a_finished_generation_returns_its_decoder_for_the_next() -> None:
    executor = GraphExecutor(_model())
    labels, orders = torch.tensor([1, 1]), _orders(2)
    first = generate(executor, labels, orders, SAMPLE, seed=1)
    gc.collect()
    assert _pooled(executor) == {(4, 2): 1}  # 2 images with CFG: 4 rows, 2 distinct labels
    (decoder,) = executor._pool[(4, 2)]
    assert torch.equal(generate(executor, labels, orders, SAMPLE, seed=1), first)
    gc.collect()
    assert executor._pool[(4, 2)] == [decoder]  # reused, not reallocated


def test_an_abandoned_stream_returns_its_decoder() -> None:
    executor = GraphExecutor(_model())
    events = stream(executor, torch.tensor([0]), _orders(1), SAMPLE)
    next(events)
    next(events)
    assert _pooled(executor) == {}  # in use
    del events
    gc.collect()
    assert _pooled(executor) == {(2, 2): 1}


def test_concurrent_generations_get_their_own_decoders() -> None:
    executor = GraphExecutor(_model())
    reference = TorchExecutor(_model())
    runs = [(torch.tensor([1]), _orders(1), 3), (torch.tensor([4]), _orders(1).flip(1), 4)]
    expected = [generate(reference, *run[:2], SAMPLE, seed=run[2]) for run in runs]
    streams = [stream(executor, *run[:2], SAMPLE, seed=run[2]) for run in runs]
    for events in zip(*streams, strict=True):
        last = events
    assert all(torch.equal(e.canvas, x) for e, x in zip(last, expected, strict=True))
    del streams, events
    gc.collect()
    assert _pooled(executor) == {(2, 2): 2}


def test_each_batch_shape_has_its_own_decoder() -> None:
    executor = GraphExecutor(_model())
    generate(executor, torch.tensor([2]), _orders(1), GREEDY.with_(guidance_scale=0.0))
    generate(executor, torch.tensor([2]), _orders(1), GREEDY)
    generate(executor, torch.tensor([2, 3, 2]), _orders(3), GREEDY)
    gc.collect()
    # (batch, distinct labels): unguided 1 row of 1 label; guided adds the null label.
    assert _pooled(executor) == {(1, 1): 1, (2, 2): 1, (6, 3): 1}


def test_each_round_shape_has_its_own_buffers_kept_for_the_next_generation() -> None:
    """Parallel decoding: one RoundBuffers (one graph on a GPU) per (inputs, queries) shape
    of the schedule after the first round, reused by the next generation."""
    executor = GraphExecutor(_model())
    config = GREEDY.with_(steps=5, schedule="cosine")
    counts = tokens_per_step("cosine", 5, L)
    # Round i feeds round i - 1's tokens (R) and asks Q = k - 1 queries: N = R + Q inputs.
    shapes = {(prev + k - 1, k - 1) for prev, k in itertools.pairwise(counts)}
    first = generate(executor, torch.tensor([2]), _orders(1), config)
    gc.collect()
    (buffers,) = executor._pool[(2, 2)]
    assert set(buffers.rounds) == shapes
    rounds = dict(buffers.rounds)
    assert torch.equal(generate(executor, torch.tensor([2]), _orders(1), config), first)
    gc.collect()
    (again,) = executor._pool[(2, 2)]
    assert again is buffers and all(again.rounds[k] is rounds[k] for k in shapes)
    assert all(r.runs >= 2 for r in again.rounds.values())  # a GPU captures them now


def test_bf16_static_step_follows_fp32() -> None:
    labels, orders = torch.tensor([1, 3]), _orders(2)
    steps = {}
    for dtype in (torch.float32, torch.bfloat16):
        executor = GraphExecutor(_model(dtype))
        events = list(stream(executor, labels, orders, GREEDY))
        steps[dtype] = torch.stack([e.tokens for e in events])
    # bf16 rounding may flip a near-tie; most greedy choices must agree.
    agreement = (steps[torch.float32] == steps[torch.bfloat16]).float().mean()
    assert agreement >= 0.75, agreement


def test_compiled_step_equals_eager() -> None:
    """torch.compile (inductor, here for CPU) traces the static step without graph breaks
    (fullgraph=True) and gives the same tokens."""
    labels, orders = torch.tensor([2, 0]), _orders(2)
    expected = generate(GraphExecutor(_model()), labels, orders, SAMPLE, seed=7)
    compiled = GraphExecutor(_model(), compile=True)
    assert torch.equal(generate(compiled, labels, orders, SAMPLE, seed=7), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replay_equals_eager_steps() -> None:
    labels, orders = torch.tensor([2, 0, 1]), _orders(3)
    expected = generate(TorchExecutor(_model(device="cuda")), labels, orders, SAMPLE, seed=2)
    executor = GraphExecutor(_model(device="cuda"))
    for _ in range(2):  # the second run replays the graph captured by the first
        assert torch.equal(generate(executor, labels, orders, SAMPLE, seed=2), expected)
    (decoder,) = executor._pool[(3, 3)]
    assert decoder.graph is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_rounds_equal_eager_rounds() -> None:
    """Parallel decoding, and an edit's prefill before it, with every round after the first
    replayed from its graph once the shape has run CAPTURE_AFTER times."""
    labels, orders = torch.tensor([2, 0, 1]), _orders(3)
    keep = torch.zeros(L, dtype=torch.bool)
    keep[: L // 4] = True
    prompt = torch.where(keep, torch.arange(L) % TINY_RAR.codebook_size, -1).expand(3, -1)
    edit_orders = kept_first(orders, keep)
    config = SAMPLE.with_(steps=6)
    eager = TorchExecutor(_model(device="cuda"))
    executor = GraphExecutor(_model(device="cuda"))
    for order, given in ((orders, None), (edit_orders, prompt)):
        expected = generate(eager, labels, order, config, 2, given)
        for _ in range(CAPTURE_AFTER + 1):  # the last runs replay the captured graphs
            assert torch.equal(generate(executor, labels, order, config, 2, given), expected)
    gc.collect()
    (decoder,) = executor._pool[(6, 3)]
    assert decoder.rounds and all(r.graph is not None for r in decoder.rounds.values())


def test_pipelines_pick_their_executor_and_dtype() -> None:
    assert spec("rar_xl").dtype("cuda") == torch.bfloat16
    assert spec("bundled").dtype("cuda") == spec("rar_xl").dtype("cpu") == torch.float32
    assert type(load_pipeline("bundled").executor) is TorchExecutor  # CPU: no graphs to replay
    pipe = load_pipeline("bundled", compile=True, dtype=torch.bfloat16)
    assert (
        isinstance(pipe.executor, GraphExecutor)
        and pipe.generator.lm_head.weight.dtype == torch.bfloat16
    )
