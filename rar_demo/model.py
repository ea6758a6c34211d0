"""The RAR generator (Yu et al. 2024): a decoder-only transformer over VQ tokens in any order.

Sequence layout, identical to the official model so its checkpoints load unchanged:

    slot:   0     1          2       3            ...  L + 1
    input:  cls   condition  t_0     t_1          ...  t_{L-1}
    pos:    p[0]  p[1]       p[2+o0] p[2+o1]      ...  p[2+o_{L-1}]
    target: -     q[2+o0]    q[2+o1] q[2+o2]      ...  -

t_i is the token generated at step i, o_i = orders[i] its raster position, p the positional
table and q the target-aware table: every input is told which position comes next, which is
what lets one network generate in any order. adaLN conditioning at slot j is
embed(condition) + timesteps_embeddings[j].

Two paths: `forward` (teacher forcing, for training and parity) and `prefill` +
`decode_step` against a preallocated, static-shape `KVCache` (for sampling); `decode_round`
feeds several inputs at once, with parallel decoding's queries. Decoding computes
each step's adaLN modulation from the weights, as the official model does, unless the cache holds
a `Modulation` table (`precompute_modulation`): the modulation depends only on (class, slot), and
its weights are a third of the model, so the fast path computes it for every slot in one GEMM.
`step` leaves the cache untouched and returns the new keys and values, so the same code exports
to ONNX with the cache as plain inputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import RARConfig

PREFIX = 2  # cls and condition slots before the image tokens
LN_EPS = 1e-6


@dataclass
class Modulation:
    """The adaLN outputs of one generation for every slot, computed before decoding."""

    table: Tensor  # (K, U, T, D): output (each block's 6, the head's 2), distinct label, slot
    rows: Tensor  # (B,) each sample's row in U

    def at(self, slots: Tensor, out: Tensor | None = None) -> Tensor:
        """(N,) slots -> (K, B, N, D), contiguous (into `out` if given): each output's
        (B, N, D) is one block of memory, which the ONNX step takes as an input of its own
        without a copy. One gather over (label, slot) pairs: at 23 inputs 3.6x faster than
        gathering slots, then labels, then transposing (RAR-B, 2-core Xeon)."""
        K, U, T, D = self.table.shape
        B, N = len(self.rows), len(slots)
        pairs = (self.rows[:, None] * T + slots).flatten()  # (B * N,)
        flat = self.table.reshape(K, U * T, D)
        if out is None:
            return flat[:, pairs].view(K, B, N, D)
        torch.index_select(flat, 1, pairs, out=out.view(K, B * N, D))
        return out


@dataclass
class KVCache:
    """Keys and values of every layer for a whole generation, allocated once (the ONNX
    executor's grows as it fills: `OnnxExecutor._grow`)."""

    k: Tensor  # (layers, B, H, T, head_dim)
    v: Tensor  # (layers, B, H, T, head_dim)
    modulation: Modulation | None = None  # None: decoding computes the adaLN outputs per step

    @classmethod
    def empty(
        cls,
        config: RARConfig,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        slots: int | None = None,
    ) -> KVCache:
        """Zeros for cls, condition and the L - 1 fed-back tokens of one whole generation, or
        for its first `slots`."""
        shape = (
            config.num_hidden_layers,
            batch_size,
            config.num_attention_heads,
            config.image_seq_len + 1 if slots is None else slots,
            config.head_dim,
        )
        k = torch.zeros(shape, device=device, dtype=dtype)
        return cls(k=k, v=torch.zeros_like(k))


CLS_ID = -1  # SlotInputs.ids: the cls token (a parameter, not an embedding row)
NO_TARGET = -1  # SlotInputs.target_rows: no target-aware embedding (cls, the last token)


@dataclass
class SlotInputs:
    """What enters the transformer at N new slots, as rows of its tables; each (B, N).

    The one definition of the sequence layout at decoding time: the model and every executor
    (the ONNX step included) build their inputs with `prefill_inputs` and `decode_inputs`.
    """

    ids: Tensor  # rows of `embeddings` (image tokens, class ids), or CLS_ID
    pos_rows: Tensor  # rows of `pos_embed`
    target_rows: Tensor  # rows of `target_aware_pos_embed`, or NO_TARGET

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.ids, self.pos_rows, self.target_rows))


def condition_ids(config: RARConfig, labels: Tensor) -> Tensor:
    """(B,) class labels in [0, C], C meaning unconditional -> their rows of `embeddings`."""
    return labels + config.codebook_size + 1


def prefill_inputs(config: RARConfig, labels: Tensor, first_positions: Tensor) -> SlotInputs:
    """Slots 0 (cls) and 1 (the condition, told which raster position step 0 fills)."""
    cls = torch.full_like(labels, CLS_ID)
    return SlotInputs(
        ids=torch.stack([cls, condition_ids(config, labels)], dim=1),
        pos_rows=torch.stack([torch.zeros_like(labels), torch.ones_like(labels)], dim=1),
        target_rows=torch.stack([torch.full_like(labels, NO_TARGET), PREFIX + first_positions], 1),
    )


def cat_inputs(*parts: SlotInputs) -> SlotInputs:
    """Slot inputs side by side along N."""
    return SlotInputs(
        ids=torch.cat([p.ids for p in parts], dim=1),
        pos_rows=torch.cat([p.pos_rows for p in parts], dim=1),
        target_rows=torch.cat([p.target_rows for p in parts], dim=1),
    )


def query_inputs(last: SlotInputs, targets: Tensor) -> SlotInputs:
    """Parallel decoding's queries: copies of the last of `last`'s inputs (same token, position
    and slot) that each target another raster position; targets (B, Q)."""
    Q = targets.shape[1]
    return SlotInputs(
        ids=last.ids[:, -1:].expand(-1, Q),
        pos_rows=last.pos_rows[:, -1:].expand(-1, Q),
        target_rows=PREFIX + targets,
    )


def decode_inputs(tokens: Tensor, positions: Tensor, next_positions: Tensor) -> SlotInputs:
    """The (B,) or (B, R) tokens just generated at raster `positions`, each told the raster
    position that comes after it."""
    if tokens.ndim == 1:
        tokens, positions, next_positions = (
            tokens[:, None],
            positions[:, None],
            next_positions[:, None],
        )
    return SlotInputs(ids=tokens, pos_rows=PREFIX + positions, target_rows=PREFIX + next_positions)


def modulate(x: Tensor, shift: Tensor, factor: Tensor) -> Tensor:
    """adaLN's x * (1 + scale) + shift, where `RAR.modulation` has made factor = 1 + scale
    (once per table on the fast path, not once per step: 49 fewer nodes in RAR-B's ONNX step)."""
    return x * factor + shift


def cache_bias(cache_len: int, input_pos: Tensor, dtype: torch.dtype, queries: int = 0) -> Tensor:
    """(N, T + N) additive attention bias, 0 where attended and -inf elsewhere, for N = R + Q
    new inputs: R real ones at slots input_pos (R,), which see the cached slots before
    input_pos[0] and each other causally; then Q queries (parallel decoding), each standing in
    for the last real input with another target: it sees what that input sees but not the
    input itself, and itself but no other query."""
    R = input_pos.shape[0]
    N = R + queries
    past = torch.arange(cache_len, device=input_pos.device) >= input_pos[0]  # (T,)
    new = torch.ones(N, N, dtype=torch.bool, device=input_pos.device).triu(1)
    if queries:
        new[R:, R - 1] = True
        new[R:, R:] = ~torch.eye(queries, dtype=torch.bool, device=input_pos.device)
    masked = torch.cat([past.expand(N, -1), new], dim=-1)
    bias = torch.zeros(masked.shape, dtype=dtype, device=input_pos.device)
    return bias.masked_fill(masked, float("-inf"))


def round_slots(
    first_slot: int | Tensor, real: int, queries: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """A round's cache slots: the `real` inputs' (R,) from `first_slot` on, and every input's
    adaLN slot (R + Q,), where each query takes the last real input's."""
    slots = first_slot + torch.arange(real, device=device)
    return slots, torch.cat([slots, slots[-1:].expand(queries)])


def attend_with_cache(
    q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, bias: Tensor, scale: float
) -> Tensor:
    """Attention of N new tokens over a cache (B, H, T, hd) that is only read, and over each
    other; `bias` (see cache_bias) says which slots count.

    One softmax over [cache scores, own scores] equals attention over the written cache, without
    first copying the new keys into it (a copy of the whole cache in an ONNX graph).
    """
    T = k_cache.shape[2]  # traced, not baked in: an ONNX step takes caches of any length
    scores = torch.cat([q @ k_cache.transpose(-2, -1), q @ k.transpose(-2, -1)], dim=-1)
    weights = (scores * scale + bias).softmax(-1)  # (B, H, N, T + N)
    return weights[..., :T] @ v_cache + weights[..., T:] @ v  # (B, H, N, hd)


class Attention(nn.Module):
    def __init__(self, config: RARConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=LN_EPS)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=LN_EPS)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, x: Tensor, cache: tuple[Tensor, Tensor] | None = None, bias: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns the output and this call's keys and values (B, H, N, hd), which the caller
        stores in the cache (read-only here). Without a cache, attention is causal over x."""
        B, N, _ = x.shape
        # (B, 3H, N, hd): one Split gives q, k, v (a permute and unbind export to 7 nodes).
        qkv = self.qkv(x).view(B, N, 3 * self.num_heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.num_heads, dim=1)  # 3 x (B, H, N, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = attend_with_cache(q, k, v, *cache, bias, self.head_dim**-0.5)
        # reshape_as: one Shape node in the ONNX export, where batch and N are both dynamic.
        out = out.transpose(1, 2).reshape_as(x)  # (B, N, D)
        return self.proj(out), k, v


class MLP(nn.Module):
    def __init__(self, config: RARConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation (as in DiT)."""

    SCALES = (1, 4)  # which of the six adaLN outputs scale (`RAR.modulation` adds their 1)

    def __init__(self, config: RARConfig) -> None:
        super().__init__()
        D = config.hidden_size
        self.norm1 = nn.LayerNorm(D, eps=LN_EPS)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(D, eps=LN_EPS)
        self.mlp = MLP(config)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))

    def forward(
        self,
        x: Tensor,
        mod: Sequence[Tensor],
        cache: tuple[Tensor, Tensor] | None = None,
        bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """mod: this block's six adaLN outputs (`RAR.modulation`), each (..., D). Returns x
        and the attention's keys and values."""
        shift_a, factor_a, gate_a, shift_m, factor_m, gate_m = mod
        h, k, v = self.attn(modulate(self.norm1(x), shift_a, factor_a), cache, bias)
        x = x + gate_a * h
        return x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, factor_m)), k, v


class FinalLayer(nn.Module):
    SCALES = (0,)  # scale first, as in the checkpoints

    def __init__(self, config: RARConfig) -> None:
        super().__init__()
        D = config.hidden_size
        self.norm_final = nn.LayerNorm(D, elementwise_affine=False, eps=LN_EPS)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))

    def forward(self, x: Tensor, mod: Sequence[Tensor]) -> Tensor:
        factor, shift = mod
        return modulate(self.norm_final(x), shift, factor)


class RAR(nn.Module):
    def __init__(self, config: RARConfig) -> None:
        super().__init__()
        self.config = config
        D, L = config.hidden_size, config.image_seq_len
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        # Given a weight, Embedding skips its own normal_ init (reset_parameters below sets
        # it): on the meta device, normal_ alone imports torch._dynamo, 2 s of every start-up.
        self.embeddings = nn.Embedding(
            config.vocab_size, D, _weight=torch.empty(config.vocab_size, D)
        )
        # Table sizes match the official checkpoints (more rows than a sequence uses).
        self.pos_embed = nn.Parameter(torch.zeros(1, L + 1024, D))
        self.target_aware_pos_embed = nn.Parameter(torch.zeros(1, L + 1024, D))
        self.timesteps_embeddings = nn.Parameter(torch.zeros(1, L + 100, D))
        self.adaln_before_head = FinalLayer(config)
        self.lm_head = nn.Linear(D, config.codebook_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: truncated normal(0.02), adaLN-Zero modulations."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for table in (self.pos_embed, self.target_aware_pos_embed, self.timesteps_embeddings):
            nn.init.trunc_normal_(table, std=0.02)
        nn.init.zeros_(self.cls_token)
        for block in [*self.blocks, self.adaln_before_head]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def condition(self, labels: Tensor) -> Tensor:
        """(B,) class labels in [0, C], C meaning unconditional -> (B, D) embeddings."""
        return self.embeddings(condition_ids(self.config, labels))

    def embed(self, inputs: SlotInputs) -> Tensor:
        """`SlotInputs` -> (B, N, D): token (or cls) + position + target position. Where the
        cls token or no target is asked for, the masked rows add exactly what the official
        model adds (the cls parameter; nothing)."""
        ids, targets = inputs.ids, inputs.target_rows
        x = self.embeddings(ids.clamp_min(0))
        x = torch.where((ids == CLS_ID)[..., None], self.cls_token[0, 0], x)
        x = x + self.pos_embed[0, inputs.pos_rows]
        target = self.target_aware_pos_embed[0, targets.clamp_min(0)]
        return x + torch.where((targets == NO_TARGET)[..., None], 0.0, target)

    def modulation(self, c: Tensor, rows: Tensor | None = None) -> list[tuple[Tensor, ...]]:
        """(..., D) conditioning -> every block's six adaLN outputs (..., D), then the head's
        two, each scale as 1 + scale (see `modulate`); with `rows`, those rows of the first dim
        of each (one gather per block). (split, not chunk: it exports with constant sizes, not
        a shape computation.)"""
        D = self.config.hidden_size
        mods = []
        for m in (*self.blocks, self.adaln_before_head):
            out = m.adaLN_modulation(c)
            for i in m.SCALES:  # in place, before the gather: once per distinct label
                out[..., i * D : (i + 1) * D] += 1
            # Gathered here, so that only one whole output is alive at a time.
            mods.append((out if rows is None else out[rows]).split(D, -1))
        return mods

    def split_modulation(self, outputs: Sequence[Tensor]) -> list[Sequence[Tensor]]:
        """The K adaLN outputs of `Modulation.at` (a (K, ...) tensor or K tensors) ->
        `modulation`'s list, each block's six then the head's two."""
        return [outputs[i : i + 6] for i in range(0, 6 * len(self.blocks), 6)] + [outputs[-2:]]

    def forward(self, tokens: Tensor, labels: Tensor, orders: Tensor) -> Tensor:
        """Teacher-forced logits for the RAR training objective.

        tokens (B, L) by raster position, labels (B,) in [0, C], orders (B, L) with orders[b, i]
        the raster position generated at step i. Returns (B, L + 1, V): row i predicts the token
        at raster position orders[b, i]; the last row has no target.
        """
        B, L = tokens.shape
        pos, target = self.pos_embed[0], self.target_aware_pos_embed[0]  # (T, D)
        cond = self.condition(labels)  # (B, D)
        seq = self.embeddings(tokens.gather(1, orders))  # (B, L, D) in generation order
        x = torch.cat([self.cls_token.expand(B, -1, -1), cond[:, None], seq], dim=1)
        x = x + torch.cat([pos[:PREFIX].expand(B, -1, -1), pos[PREFIX + orders]], dim=1)
        none = x.new_zeros(B, 1, x.shape[-1])
        x = x + torch.cat([none, target[PREFIX + orders], none], dim=1)  # (B, L + 2, D)
        # adaLN depends only on (label, slot): with few distinct labels, run it once per label
        # and gather; with many (one class per emoji), gathering the (B, L + 2, 6D) outputs,
        # and scattering their gradients back, costs more than it saves.
        distinct, rows = labels.unique(return_inverse=True)
        few = 2 * len(distinct) <= B
        c = (self.condition(distinct) if few else cond)[:, None]
        mods = self.modulation(
            c + self.timesteps_embeddings[:, : L + PREFIX], rows if few else None
        )
        for block, mod in zip(self.blocks, mods[:-1], strict=True):
            x, _, _ = block(x, mod)
        return self.lm_head(self.adaln_before_head(x[:, 1:], [t[:, 1:] for t in mods[-1]]))

    # --- incremental decoding -------------------------------------------------------------

    def new_cache(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """A KV cache for one whole generation, on the weights' device and dtype by default."""
        ref = self.lm_head.weight
        return KVCache.empty(self.config, batch_size, device or ref.device, dtype or ref.dtype)

    def modulation_table(self, labels: Tensor) -> Tensor:
        """(U,) labels -> (K, U, T, D) adaLN outputs for every slot a generation uses."""
        T = self.config.image_seq_len + 1
        c = self.condition(labels)[:, None] + self.timesteps_embeddings[:, :T]  # (U, T, D)
        return torch.stack([t for mod in self.modulation(c) for t in mod])

    def precompute_modulation(self, labels: Tensor) -> Modulation:
        """The fast path's table for (B,) labels; CFG batches hold two distinct labels."""
        distinct, rows = labels.unique(return_inverse=True)
        return Modulation(self.modulation_table(distinct), rows)

    def step(
        self,
        x: Tensor,
        mods: list[Sequence[Tensor]],
        k_cache: Sequence[Tensor],
        v_cache: Sequence[Tensor],
        bias: Tensor,
        heads: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The transformer on N new inputs x (B, N, D) with adaLN outputs `mods`, against
        per-layer caches (B, H, T, hd) (views of a KVCache, or one ONNX input per layer:
        slicing one input would copy it); `bias` (N, T + N) from `cache_bias` says which
        cached slots and which new inputs each new input sees.

        Returns the (B, heads, V) logits of the last `heads` inputs (all N where None), and the
        new (layers, B, H, N, hd) keys and values, for the caller to store (the real ones only).
        """
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, mods[i], (k_cache[i], v_cache[i]), bias)
            ks.append(k)
            vs.append(v)
        if heads is not None:
            x, mods = x[:, -heads:], [*mods[:-1], [t[:, -heads:] for t in mods[-1]]]
        logits = self.lm_head(self.adaln_before_head(x, mods[-1]))
        return logits, torch.stack(ks), torch.stack(vs)

    def _decode(
        self,
        cache: KVCache,
        x: Tensor,
        labels: Tensor,
        first_slot: int | Tensor,
        queries: int = 0,
    ) -> Tensor:
        """Feeds x (B, R + Q, D): R real inputs from `first_slot` on, written to the cache, then
        Q queries at the last real one's slot, never written. Returns (B, 1 + Q, V)."""
        R = x.shape[1] - queries
        slots, mod_slots = round_slots(first_slot, R, queries, x.device)
        if cache.modulation is None:
            c = self.condition(labels)[:, None] + self.timesteps_embeddings[0, mod_slots]
            mods = self.modulation(c)  # each output (B, N, D)
        else:
            mods = self.split_modulation(cache.modulation.at(mod_slots))
        if isinstance(first_slot, Tensor):  # static shapes: the whole cache, later slots masked
            k_cache, v_cache = cache.k, cache.v
        else:  # only the slots written so far: attention reads half the cache on average
            k_cache, v_cache = cache.k[:, :, :, :first_slot], cache.v[:, :, :, :first_slot]
        bias = cache_bias(k_cache.shape[3], slots, x.dtype, queries)  # (N, T + N)
        logits, k, v = self.step(x, mods, k_cache, v_cache, bias, heads=1 + queries)
        cache.k.index_copy_(3, slots, k[:, :, :, :R])
        cache.v.index_copy_(3, slots, v[:, :, :, :R])
        return logits

    def decode_round(
        self, cache: KVCache, first_slot: int, inputs: SlotInputs, queries: int, labels: Tensor
    ) -> Tensor:
        """One round of parallel decoding: `inputs` (B, R + Q) are R real inputs, written to
        the cache from `first_slot` on, then Q queries (`query_inputs`), never written.
        Returns the (B, 1 + Q, V) logits of the positions the last real input and each query
        target, each exactly what a sequential decode that visits that position next gives."""
        return self._decode(cache, self.embed(inputs), labels, first_slot, queries)

    def prefill(self, cache: KVCache, labels: Tensor, first_positions: Tensor) -> Tensor:
        """Writes slots 0 (cls) and 1 (condition); returns the (B, V) logits of step 0."""
        x = self.embed(prefill_inputs(self.config, labels, first_positions))  # (B, 2, D)
        return self._decode(cache, x, labels, first_slot=0)[:, 0]

    def decode_step(
        self,
        cache: KVCache,
        step: int | Tensor,
        tokens: Tensor,
        positions: Tensor,
        next_positions: Tensor,
        labels: Tensor,
    ) -> Tensor:
        """Feeds the token of step - 1 and returns the (B, V) logits of `step` (1 <= step < L).

        tokens (B,) the token generated at step - 1, positions (B,) its raster position,
        next_positions (B,) the raster position that `step` will fill. With `step` a 0-d tensor
        on the model's device, every shape and index stays the same from step to step, so one
        captured CUDA graph replays any step (see backends.graphs).
        """
        x = self.embed(decode_inputs(tokens, positions, next_positions))  # (B, 1, D)
        return self._decode(cache, x, labels, first_slot=step + 1)[:, 0]
