"""The fast path with every decode step replayed from a CUDA graph.

At batch 1 a RAR decode step is a few hundred tiny kernels, so on a GPU it is bound by launch
latency, not by arithmetic or bandwidth. Capturing the step once in a `torch.cuda.CUDAGraph` and
replaying it turns those launches into one. That needs every tensor the step touches to live at
a fixed address with a fixed shape, which is what `StepBuffers` holds: the KV cache, the
modulation table, the step's inputs and its logits. The model's static decode step
(`RAR.decode_step` with a tensor `step`) attends over the whole cache with the slots not yet
written masked out, so one graph serves all 255 steps. Parallel decoding's rounds (several
inputs and queries, `RAR.decode_round`) get one graph per round shape (N inputs, Q queries),
captured the second time that shape runs (so an edit's one-off shapes stay eager) and kept
with the buffers, all of them in one memory pool; the first round of a generation (the
prefill, and an edit's given tokens) runs eagerly.

Optionally the one-token step is first compiled with `torch.compile` (fusing the norm,
modulate, gate and residual elementwise kernels; rounds are not compiled); Hugging Face ZeroGPU
does not allow compiling at runtime, so it is off unless asked for. On a CPU there is nothing
to capture and the same static step runs eagerly, which is how the tests check it.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from ..model import RAR, KVCache, Modulation, SlotInputs, prefill_inputs
from . import TorchExecutor

Key = tuple[int, int]  # (batch size, distinct labels): the shapes a graph is captured for
CAPTURE_AFTER = 2  # a round shape is captured the second time it runs


@dataclass
class StepBuffers:
    """Everything one decode step reads or writes, allocated once per `Key`."""

    cache: KVCache  # with its Modulation table
    step: Tensor  # () the step being decoded, on the device
    tokens: Tensor  # (B,)
    positions: Tensor  # (B,)
    next_positions: Tensor  # (B,)
    labels: Tensor  # (B,) only read by the reference path, kept for the executor protocol
    logits: Tensor | None = None  # (B, V) written by every run; the graph's output
    graph: torch.cuda.CUDAGraph | None = None
    rounds: dict[tuple[int, int], RoundBuffers] = field(default_factory=dict)  # by (N, Q)
    # One memory pool for all the round graphs: a generation replays its rounds one after
    # another on one stream, and each round's logits are read before the next replay, so
    # a round's scratch memory may be the next one's.
    round_pool: Any = None


@dataclass
class RoundBuffers:
    """A round of parallel decoding's inputs (N of them, Q queries), against the cache of
    its `StepBuffers`; captured as a graph once the shape comes back (CAPTURE_AFTER)."""

    first_slot: Tensor  # () the first real input's slot, on the device
    inputs: SlotInputs  # (B, N) each
    logits: Tensor | None = None  # (B, 1 + Q, V)
    graph: torch.cuda.CUDAGraph | None = None
    runs: int = 0


@dataclass
class Lease:
    """The sampler's handle on a `StepBuffers` for one generation. Dropping it (the
    generation ended or was abandoned) gives the buffers back to the executor's pool."""

    batch_size: int
    buffers: StepBuffers | None = None
    _finalizer: weakref.finalize | None = field(default=None, repr=False)


class GraphExecutor(TorchExecutor):
    """TorchExecutor's fast path, every decode step replayed from one CUDA graph per `Key`
    (and every round of parallel decoding from one per round shape).

        Generations may run concurrently (each takes its own buffers from the pool); the logits a
        step returns are a buffer that the next step of the same generation overwrites.
    """

    def __init__(self, model: RAR, compile: bool = False) -> None:
        super().__init__(model, fast=True)
        self._step: Callable[..., Tensor] = self._static_step
        if compile:
            self._step = torch.compile(
                self._static_step, mode="max-autotune-no-cudagraphs", fullgraph=True, dynamic=False
            )
        self._pool: dict[Key, list[StepBuffers]] = defaultdict(list)

    @property
    def captures(self) -> bool:
        return self.device.type == "cuda"

    def new_cache(self, batch_size: int) -> Lease:
        return Lease(batch_size)

    def prefill(self, lease: Lease, labels: Tensor, first_positions: Tensor) -> Tensor:
        inputs = prefill_inputs(self.config, labels, first_positions)
        return self.decode_round(lease, 0, inputs, 0, labels)[:, 0]

    def decode_round(
        self, lease: Lease, first_slot: int, inputs: SlotInputs, queries: int, labels: Tensor
    ) -> Tensor:
        """`RAR.decode_round`; the first round (the prefill, with an edit's given tokens) runs
        eagerly, each later one from the graph of its (N, Q) shape once that shape has run
        CAPTURE_AFTER times (an edit's one-off shapes are never captured)."""
        if first_slot == 0:
            cache = self._take_buffers(lease, labels)
            return self.model.decode_round(cache, 0, inputs, queries, labels)
        buffers = lease.buffers
        key = inputs.ids.shape[1], queries
        if (r := buffers.rounds.get(key)) is None:
            r = buffers.rounds[key] = RoundBuffers(
                first_slot=buffers.step.clone(),
                inputs=SlotInputs(*(t.clone() for t in inputs)),
            )
        r.first_slot.fill_(first_slot)
        for dst, src in zip(r.inputs, inputs, strict=True):
            dst.copy_(src)
        run = partial(self._run_round, buffers, r, queries)
        r.runs += 1
        if not self.captures or (r.graph is None and r.runs < CAPTURE_AFTER):
            return run()
        if r.graph is None:
            if buffers.round_pool is None:
                buffers.round_pool = torch.cuda.graph_pool_handle()
            r.graph, r.logits = self._capture(run, buffers.round_pool)
        r.graph.replay()
        return r.logits

    def _take_buffers(self, lease: Lease, labels: Tensor) -> KVCache:
        """A generation's buffers from the pool (or new ones), holding its adaLN table."""
        modulation = self.model.precompute_modulation(labels)
        key = (lease.batch_size, modulation.table.shape[1])
        pool = self._pool[key]
        try:  # pop, not check-then-pop: another thread may take the last one in between
            buffers = pool.pop()
        except IndexError:
            buffers = self._allocate(labels, modulation)
        lease.buffers = buffers
        lease._finalizer = weakref.finalize(lease, pool.append, buffers)
        cache = buffers.cache
        cache.modulation.table.copy_(modulation.table)
        cache.modulation.rows.copy_(modulation.rows)
        buffers.labels.copy_(labels)
        # Slots are written before they are read and unwritten ones are masked, so the cache
        # is reused as it is.
        return cache

    def _run_round(self, d: StepBuffers, r: RoundBuffers, queries: int) -> Tensor:
        return self.model.decode_round(d.cache, r.first_slot, r.inputs, queries, d.labels)

    def decode_step(
        self,
        lease: Lease,
        step: int,
        tokens: Tensor,
        positions: Tensor,
        next_positions: Tensor,
        labels: Tensor,
    ) -> Tensor:
        buffers = lease.buffers
        buffers.step.fill_(step)
        buffers.tokens.copy_(tokens)
        buffers.positions.copy_(positions)
        buffers.next_positions.copy_(next_positions)
        if not self.captures:
            return self._run(buffers)
        if buffers.graph is None:
            buffers.graph, buffers.logits = self._capture(partial(self._run, buffers))
        buffers.graph.replay()
        return buffers.logits

    def _run(self, d: StepBuffers) -> Tensor:
        c = d.cache
        return self._step(
            c.k, c.v, c.modulation.table, c.modulation.rows, d.step, d.tokens, d.positions,
            d.next_positions, d.labels,
        )  # fmt: skip

    def _static_step(
        self,
        k: Tensor,
        v: Tensor,
        table: Tensor,
        rows: Tensor,
        step: Tensor,
        tokens: Tensor,
        positions: Tensor,
        next_positions: Tensor,
        labels: Tensor,
    ) -> Tensor:
        """The decode step on plain tensors, which is what torch.compile traces best."""
        cache = KVCache(k, v, Modulation(table, rows))
        return self.model.decode_step(cache, step, tokens, positions, next_positions, labels)

    def _allocate(self, labels: Tensor, modulation: Modulation) -> StepBuffers:
        B = labels.shape[0]
        cache = self.model.new_cache(B)
        cache.modulation = Modulation(modulation.table.clone(), modulation.rows.clone())
        index = torch.zeros(B, dtype=torch.long, device=self.device)
        return StepBuffers(
            cache=cache,
            step=torch.ones((), dtype=torch.long, device=self.device),
            tokens=index.clone(),
            positions=index.clone(),
            next_positions=index.clone(),
            labels=labels.clone(),
        )

    def _capture(
        self, run: Callable[[], Tensor], pool: Any = None
    ) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        """Captures `run` (a step or round on its buffers' current inputs): the graph, and its
        output buffer. The warm-up runs (kernel selection, compilation) write the current
        slots, which the replay that follows rewrites with the same values. Capture errors
        are this thread's only: another generation may run (or capture) meanwhile."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            out = run()
        return graph, out
