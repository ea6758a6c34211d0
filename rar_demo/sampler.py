"""Token-by-token sampling for RAR in any order, streamed one event per step.

One batch may hold samples with different orders: the model only sees per-sample position
tables, so side-by-side panels cost one forward pass per step. An edit gives some cells'
tokens (a `prompt`): the orders visit those first, they are teacher-forced in one batched
prefill, and the sampler generates the rest. Each sample draws its randomness
from its own seeded stream (inverse-CDF sampling against pre-drawn uniforms), so a panel comes
out the same whether it is generated alone or next to others.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .backends import Executor
from .config import SCHEDULES, SamplingConfig
from .model import PREFIX, cat_inputs, decode_inputs, prefill_inputs, query_inputs
from .orders import validate_orders


@dataclass(frozen=True)
class StepEvent:
    """What happened at one step, for every sample of the batch."""

    step: int  # 0-based index of the step just taken
    num_steps: int
    positions: Tensor  # (B,) raster position filled at this step
    tokens: Tensor  # (B,) token placed there
    probs: Tensor  # (B,) probability of that token under the sampling distribution
    entropy: Tensor  # (B,) entropy of that distribution, in nats
    canvas: Tensor  # (B, L) tokens by raster position so far, -1 where not generated yet
    round: int = 0  # the step of the sampler (several tokens per step: see SamplingConfig.steps)
    num_rounds: int = 1
    given: int = 0  # cells given by an edit's prompt: steps 0 .. given - 1, never yielded

    @property
    def done(self) -> bool:
        return self.step == self.num_steps - 1


def guidance_scale(config: SamplingConfig, step: int, num_steps: int) -> float:
    """The official power-cosine CFG schedule: 1 at the first step, rising to the full scale."""
    ramp = (1 - math.cos(((step / num_steps) ** config.guidance_power) * math.pi)) / 2
    return (config.guidance_scale - 1) * ramp + 1


def filter_logits(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Masks (to -inf) tokens outside the top-k and outside the top-p nucleus."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the mass before it already reaches top_p (the first always stays).
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


Seeds = int | Sequence[int]  # one for every sample, or one per sample


def per_sample(seed: Seeds, batch_size: int) -> list[int]:
    """`seed` as one seed per sample; ValueError for a wrong count."""
    seeds = [seed] * batch_size if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != batch_size:
        raise ValueError(f"give one seed, or one per sample ({batch_size}), got {len(seeds)}")
    return seeds


def draw_uniforms(seed: Seeds, batch_size: int, num_steps: int) -> Tensor:
    """(B, L) uniforms, each sample's stream from its seed: one seed for all samples means one
    noise sequence, the same for every sample."""
    seeds = per_sample(seed, batch_size)
    streams = {
        s: torch.rand(num_steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        for s in set(seeds)
    }
    return torch.stack([streams[s] for s in seeds])


def _pick(probs: Tensor, uniforms: Tensor | None) -> Tensor:
    if uniforms is None:
        return probs.argmax(-1)
    cdf = probs.double().cumsum(-1)
    u = (uniforms * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)


def step_sizes(config: SamplingConfig, L: int, given: int = 0) -> list[int]:
    """Tokens per step for the L - given cells to generate; an edit with fewer cells than
    `config.steps` takes one per step."""
    if config.steps is not None:
        tokens_per_step(config.schedule, config.steps, L)  # the setting itself must be valid
    todo = L - given
    return tokens_per_step(config.schedule, min(config.steps or todo, todo), todo)


def check_prompt(prompt: Tensor, orders: Tensor, codebook_size: int) -> int:
    """The number of cells an edit's prompt (B, L) gives (tokens by raster position, -1 where
    to generate), after checking that every row gives as many and `orders` visits them first;
    ValueError otherwise."""
    if prompt.shape != orders.shape:
        raise ValueError(f"prompt must have shape {tuple(orders.shape)}, got {tuple(prompt.shape)}")
    if prompt.min() < -1 or prompt.max() >= codebook_size:
        raise ValueError(f"prompt tokens must be in [0, {codebook_size}), or -1 to generate")
    given = prompt >= 0
    K = int(given[0].sum())
    if (given.sum(1) != K).any():
        raise ValueError("every row of the prompt must give the same number of cells")
    if K == prompt.shape[1]:
        raise ValueError("the prompt gives every cell: nothing is left to generate")
    if not given.gather(1, orders.cpu()[:, :K].long()).all():
        raise ValueError("the orders must visit the prompt's cells first (see orders.kept_first)")
    return K


def _validate(
    executor: Executor,
    labels: Tensor,
    orders: Tensor,
    config: SamplingConfig,
    seed: Seeds,
    prompt: Tensor | None,
) -> tuple[int, Tensor | None]:
    """Checks everything before any work: (the prompt's given cells, the prompt, or None
    where it gives none: that is ordinary generation)."""
    net = executor.config
    # A repeated or out-of-range position would silently leave cells unfilled (-1) or index
    # past the canvas; every row must visit each raster position exactly once.
    validate_orders(orders, net.image_seq_len)
    B = orders.shape[0]
    if labels.shape != (B,):
        raise ValueError(f"labels must have shape ({B},), got {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= net.condition_num_classes:
        raise ValueError(f"class ids must be in [0, {net.condition_num_classes})")
    per_sample(seed, B)
    given = 0 if prompt is None else check_prompt(prompt.cpu(), orders, net.codebook_size)
    step_sizes(config, net.image_seq_len, given)  # raises for a bad steps setting
    return given, prompt if given else None


def stream(
    executor: Executor,
    labels: Tensor,
    orders: Tensor,
    config: SamplingConfig,
    seed: Seeds = 0,
    prompt: Tensor | None = None,
) -> Iterator[StepEvent]:
    """Generates one image per row of `orders`, yielding a StepEvent after every step.

    labels (B,) class ids in [0, C); orders (B, L) with orders[b, i] the raster position of
    step i; seed: one for all samples, or one per sample. prompt (B, L): an edit's given
    tokens by raster position, -1 where to generate; the orders visit the given cells first
    (see `check_prompt`). Bad arguments raise ValueError here, before any work. Stop at any
    time by abandoning or closing the iterator: the KV cache is local to the generation and
    goes with it.
    """
    given, prompt = _validate(executor, labels, orders, config, seed, prompt)
    return _events(executor, labels, orders, config, seed, prompt, given)


def generate(
    executor: Executor,
    labels: Tensor,
    orders: Tensor,
    config: SamplingConfig,
    seed: Seeds = 0,
    prompt: Tensor | None = None,
) -> Tensor:
    """Generates without streaming; returns the (B, L) tokens by raster position, on the CPU.

    The same tokens as `stream`, but nothing leaves the device until the end, so on a GPU the
    host queues steps ahead of the kernels instead of waiting for each one.
    """
    _, prompt = _validate(executor, labels, orders, config, seed, prompt)
    orders = orders.to(executor.device)
    B, L = orders.shape
    canvas = torch.empty((B, L), dtype=torch.long, device=executor.device)
    if prompt is not None:
        canvas.copy_(prompt)
    rows = torch.arange(B, device=executor.device)
    for start, tokens, _ in _sample(executor, labels, orders, config, seed, prompt):
        for j in range(tokens.shape[1]):
            canvas[rows, orders[:, start + j]] = tokens[:, j]
    return canvas.cpu()


def _events(
    executor: Executor,
    labels: Tensor,
    orders: Tensor,
    config: SamplingConfig,
    seed: Seeds,
    prompt: Tensor | None,
    given: int,
) -> Iterator[StepEvent]:
    orders = orders.cpu()
    B, L = orders.shape
    canvas = torch.full((B, L), -1, dtype=torch.long) if prompt is None else prompt.cpu().clone()
    rows = torch.arange(B)
    num_rounds = len(step_sizes(config, L, given))
    rounds = _sample(executor, labels, orders, config, seed, prompt)
    for round_, (start, tokens, probs) in enumerate(rounds):
        chosen = probs.gather(-1, tokens[..., None]).squeeze(-1)
        entropy = torch.special.entr(probs).sum(-1)
        # One device-to-host copy per round: each copy waits for the GPU.
        packed = torch.stack([tokens.to(probs.dtype), chosen, entropy]).cpu()  # (3, B, k)
        for j in range(tokens.shape[1]):
            step = start + j
            positions = orders[:, step].clone()  # the caller's orders stay theirs
            canvas[rows, positions] = packed[0, :, j].long()
            yield StepEvent(
                step=step,
                num_steps=L,
                positions=positions,
                tokens=packed[0, :, j].long(),
                probs=packed[1, :, j],
                entropy=packed[2, :, j],
                canvas=canvas.clone(),
                round=round_,
                num_rounds=num_rounds,
                given=given,
            )


def tokens_per_step(schedule: str, steps: int, length: int) -> list[int]:
    """How many tokens each of `steps` steps generates (at least one, `length` in all).

    constant: as equal as can be, the larger steps last. cosine: few tokens first and more
    later (the share generated after step s is 1 - cos(pi/2 * s / steps)), as MaskGIT, RandAR
    and ARPG schedule theirs: the first tokens decide the most.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if not 1 <= steps <= length:
        raise ValueError(f"steps must be between 1 and {length}, got {steps}")
    if schedule == "constant":
        base, extra = divmod(length, steps)
        return [base + (s >= steps - extra) for s in range(steps)]
    done, counts = 0, []
    for s in range(1, steps + 1):
        target = round(length * (1 - math.cos(math.pi / 2 * s / steps)))
        # Every step takes at least one token and leaves at least one for each step after it.
        target = min(max(target, done + 1), length - (steps - s))
        counts.append(target - done)
        done = target
    return counts


def _choose(
    logits: Tensor, config: SamplingConfig, B: int, first: int, L: int, uniforms: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(tokens (B, k), probs (B, k, V)) for steps first .. first + k - 1 from their logits
    (B or 2B, k, V): guidance by each step's own scale, temperature, top-k/p, then a pick."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32
    k = logits.shape[1]
    if config.guidance_scale != 0:
        cond, uncond = logits[:B], logits[B:]
        if k == 1:  # a Python float: no tensor built on the host every step
            scale = guidance_scale(config, first, L)
        else:
            scales = [guidance_scale(config, first + j, L) for j in range(k)]
            scale = torch.tensor(scales, dtype=logits.dtype, device=logits.device)[:, None]
        logits = uncond + (cond - uncond) * scale
    logits = filter_logits(logits / config.temperature, config.top_k, config.top_p)
    probs = F.softmax(logits, dim=-1)
    u = None if uniforms is None else uniforms[:, first : first + k].flatten()
    return _pick(probs.flatten(0, 1), u).view(B, k), probs


@torch.no_grad()  # not inference_mode: what it yields is used outside it
def _sample(
    executor: Executor,
    labels: Tensor,
    orders: Tensor,
    config: SamplingConfig,
    seed: Seeds,
    prompt: Tensor | None = None,
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Yields (first step, tokens (B, k), probs (B, k, V)) per step of `config.steps`, on the
    model's device, never waiting on it. One token per step feeds each token as it comes
    (`decode_step`: a CUDA graph replays it); several per step run rounds of real inputs and
    queries (`decode_round`), and so does an edit's prefill of the prompt's K given tokens."""
    net, device = executor.config, executor.device
    B, L = orders.shape
    labels, orders = labels.to(device), orders.to(device)
    guided = config.guidance_scale != 0
    K = 0 if prompt is None else int((prompt[0] >= 0).sum())
    given = None if prompt is None else prompt.to(device).gather(1, orders[:, :K])  # (B, K)
    if guided:  # rows [0, B) conditional, [B, 2B) unconditional, which see the same prompt
        labels = torch.cat([labels, torch.full_like(labels, net.null_class)])
        orders = orders.repeat(2, 1)
        given = None if given is None else given.repeat(2, 1)
    uniforms = None if config.greedy else draw_uniforms(seed, B, L).to(device)
    cache = executor.new_cache(labels.shape[0])
    counts = step_sizes(config, L, K)

    if len(counts) == L and not K:
        logits = executor.prefill(cache, labels, orders[:, 0])
        for step in range(L):
            tokens, probs = _choose(logits[:, None], config, B, step, L, uniforms)
            yield step, tokens, probs
            if step + 1 < L:
                fed = tokens[:, 0].repeat(2) if guided else tokens[:, 0]
                logits = executor.decode_step(
                    cache, step + 1, fed, orders[:, step], orders[:, step + 1], labels
                )
        return

    real, first_slot, start = prefill_inputs(net, labels, orders[:, 0]), 0, K
    if K:  # the prompt rides along with the first round: one batched prefill
        real = cat_inputs(real, decode_inputs(given, orders[:, :K], orders[:, 1 : K + 1]))
    for k in counts:
        targets = orders[:, start + 1 : start + k]  # (B or 2B, k - 1): the queries' positions
        inputs = cat_inputs(real, query_inputs(real, targets))
        logits = executor.decode_round(cache, first_slot, inputs, k - 1, labels)  # (.., k, V)
        tokens, probs = _choose(logits, config, B, start, L, uniforms)
        yield start, tokens, probs
        end = start + k
        if end < L:
            fed = tokens.repeat(2, 1) if guided else tokens
            real = decode_inputs(fed, orders[:, start:end], orders[:, start + 1 : end + 1])
            first_slot = PREFIX + start  # token i sits at slot PREFIX + i
        start = end
