"""The fast path with every decode step replayed from a CUDA graph.

At batch 1 a RAR decode step is a few hundred tiny kernels, so on a GPU it is bound by launch
latency, not by arithmetic or bandwidth. Capturing the step once in a `torch.cuda.CUDAGraph` and
replaying it turns those launches into one. That needs every tensor the step touches to live at
a fixed address with a fixed shape, which is what `StaticDecoder` holds: the KV cache, the
modulation table, the step's inputs and its logits. The model's static decode step
(`RAR.decode_step` with a tensor `step`) attends over the whole cache with the slots not yet
written masked out, so one graph serves all 255 steps.

Optionally the step is first compiled with `torch.compile` (fusing the norm, modulate, gate and
residual elementwise kernels); Hugging Face ZeroGPU does not allow compiling at runtime, so it
is off unless asked for. On a CPU there is nothing to capture and the same static step runs
eagerly, which is how the tests check it.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..model import RAR, KVCache, Modulation
from . import TorchExecutor

Key = tuple[int, int]  # (batch size, distinct labels): the shapes a graph is captured for


@dataclass
class StaticDecoder:
    """Everything one decode step reads or writes, allocated once per `Key`."""

    cache: KVCache  # with its Modulation table
    step: Tensor  # () the step being decoded, on the device
    tokens: Tensor  # (B,)
    positions: Tensor  # (B,)
    next_positions: Tensor  # (B,)
    labels: Tensor  # (B,) only read by the reference path, kept for the executor protocol
    logits: Tensor | None = None  # (B, V) written by every run; the graph's output
    graph: torch.cuda.CUDAGraph | None = None


@dataclass
class Lease:
    """The sampler's handle on a `StaticDecoder` for one generation. Dropping it (the
    generation ended or was abandoned) gives the decoder back to the executor's pool."""

    batch_size: int
    decoder: StaticDecoder | None = None
    _finalizer: weakref.finalize | None = field(default=None, repr=False)


class GraphExecutor(TorchExecutor):
    """TorchExecutor's fast path, every decode step replayed from one CUDA graph per `Key`.

    Generations may run concurrently (each takes its own decoder from the pool); the logits a
    step returns are a buffer that the next step of the same generation overwrites.
    """

    def __init__(self, model: RAR, compile: bool = False) -> None:
        super().__init__(model, fast=True)
        self._step: Callable[..., Tensor] = self._static_step
        if compile:
            self._step = torch.compile(
                self._static_step, mode="max-autotune-no-cudagraphs", fullgraph=True, dynamic=False
            )
        self._pool: dict[Key, list[StaticDecoder]] = defaultdict(list)

    @property
    def captures(self) -> bool:
        return self.device.type == "cuda"

    def new_cache(self, batch_size: int) -> Lease:
        return Lease(batch_size)

    def prefill(self, lease: Lease, labels: Tensor, first_positions: Tensor) -> Tensor:
        modulation = self.model.precompute_modulation(labels)
        key = (lease.batch_size, modulation.table.shape[1])
        pool = self._pool[key]
        try:  # pop, not check-then-pop: another thread may take the last one in between
            decoder = pool.pop()
        except IndexError:
            decoder = self._allocate(labels, modulation)
        lease.decoder = decoder
        lease._finalizer = weakref.finalize(lease, pool.append, decoder)
        cache = decoder.cache
        cache.modulation.table.copy_(modulation.table)
        cache.modulation.rows.copy_(modulation.rows)
        decoder.labels.copy_(labels)
        # Slots are written before they are read and unwritten ones are masked, so the cache
        # is reused as it is.
        return self.model.prefill(cache, labels, first_positions)

    def decode_step(
        self,
        lease: Lease,
        step: int,
        tokens: Tensor,
        positions: Tensor,
        next_positions: Tensor,
        labels: Tensor,
    ) -> Tensor:
        decoder = lease.decoder
        decoder.step.fill_(step)
        decoder.tokens.copy_(tokens)
        decoder.positions.copy_(positions)
        decoder.next_positions.copy_(next_positions)
        if not self.captures:
            return self._run(decoder)
        if decoder.graph is None:
            self._capture(decoder)
        decoder.graph.replay()
        return decoder.logits

    def _run(self, d: StaticDecoder) -> Tensor:
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

    def _allocate(self, labels: Tensor, modulation: Modulation) -> StaticDecoder:
        B = labels.shape[0]
        cache = self.model.new_cache(B)
        cache.modulation = Modulation(modulation.table.clone(), modulation.rows.clone())
        index = torch.zeros(B, dtype=torch.long, device=self.device)
        return StaticDecoder(
            cache=cache,
            step=torch.ones((), dtype=torch.long, device=self.device),
            tokens=index.clone(),
            positions=index.clone(),
            next_positions=index.clone(),
            labels=labels.clone(),
        )

    def _capture(self, d: StaticDecoder) -> None:
        """Captures the decode step with the decoder's current inputs. The warm-up runs (kernel
        selection, compilation) write the current step's slot, which the replay that follows
        rewrites with the same values."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._run(d)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        d.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(d.graph):
            d.logits = self._run(d)
