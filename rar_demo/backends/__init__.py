"""What the sampler runs: an executor steps the generator against a cache, one token per
sample (`decode_step`) or several (`decode_round`, parallel decoding).

`RAR` is itself an executor (the reference path: adaLN computed at every step). `TorchExecutor`
adds the fast path, and `backends.onnx.OnnxExecutor` runs an ONNX export with ONNX Runtime.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from ..config import RARConfig
from ..model import RAR, KVCache, SlotInputs

BACKENDS: tuple[str, ...] = ("torch", "onnx")


class Executor(Protocol):
    @property
    def config(self) -> RARConfig: ...

    @property
    def device(self) -> torch.device:
        """Where the sampler keeps labels, orders and logits."""
        ...

    def new_cache(self, batch_size: int) -> Any: ...

    def prefill(self, cache: Any, labels: Tensor, first_positions: Tensor) -> Tensor:
        """Feeds cls and condition; returns the (B, V) logits of step 0."""
        ...

    def decode_step(
        self,
        cache: Any,
        step: int,
        tokens: Tensor,
        positions: Tensor,
        next_positions: Tensor,
        labels: Tensor,
    ) -> Tensor:
        """Feeds the token of step - 1; returns the (B, V) logits of `step`."""
        ...

    def decode_round(
        self, cache: Any, first_slot: int, inputs: SlotInputs, queries: int, labels: Tensor
    ) -> Tensor:
        """Parallel decoding (see `RAR.decode_round`): R real inputs from `first_slot` on,
        then Q queries; slot 0 starts the generation as prefill does. Returns the
        (B, 1 + Q, V) logits."""
        ...


class TorchExecutor:
    """A RAR in PyTorch. fast: compute every slot's adaLN modulation at prefill (one GEMM per
    generation) instead of reading the adaLN weights, a third of the model, at every step."""

    def __init__(self, model: RAR, fast: bool = True) -> None:
        self.model = model
        self.fast = fast

    @property
    def config(self) -> RARConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    def new_cache(self, batch_size: int) -> KVCache:
        return self.model.new_cache(batch_size)

    def prefill(self, cache: KVCache, labels: Tensor, first_positions: Tensor) -> Tensor:
        if self.fast:
            cache.modulation = self.model.precompute_modulation(labels)
        return self.model.prefill(cache, labels, first_positions)

    def decode_round(
        self, cache: KVCache, first_slot: int, inputs: SlotInputs, queries: int, labels: Tensor
    ) -> Tensor:
        """Several tokens per step (see `RAR.decode_round`); the first round prefills."""
        if first_slot == 0 and self.fast:
            cache.modulation = self.model.precompute_modulation(labels)
        return self.model.decode_round(cache, first_slot, inputs, queries, labels)

    def decode_step(
        self,
        cache: KVCache,
        step: int,
        tokens: Tensor,
        positions: Tensor,
        next_positions: Tensor,
        labels: Tensor,
    ) -> Tensor:
        return self.model.decode_step(cache, step, tokens, positions, next_positions, labels)
