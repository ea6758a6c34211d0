"""The streaming any-order sampler on a tiny random RAR.

The model is re-initialised with normal(0.1) weights: the official adaLN-Zero init makes a
fresh model's logits constant, which would let almost any sampler bug pass unnoticed. It runs
in float64 so that comparisons between different code paths are not decided by rounding.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import TINY_RAR
from torch import nn

from rar_demo.backends import Executor, TorchExecutor
from rar_demo.backends.graphs import GraphExecutor
from rar_demo.config import SCHEDULES, SamplingConfig
from rar_demo.model import RAR
from rar_demo.orders import kept_first
from rar_demo.sampler import filter_logits, generate, guidance_scale, stream, tokens_per_step

CONFIG = TINY_RAR
L, V, C = CONFIG.image_seq_len, CONFIG.codebook_size, CONFIG.condition_num_classes

GREEDY = SamplingConfig(greedy=True)
SAMPLE = SamplingConfig(temperature=1.0)


@pytest.fixture(scope="module")
def rar() -> RAR:
    torch.manual_seed(0)
    model = RAR(CONFIG).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            nn.init.normal_(p, std=0.1)
    return model


EXECUTORS = {
    "plain": lambda rar: rar,  # adaLN from the weights at every step, as the official code
    "fast": TorchExecutor,
    "static": GraphExecutor,  # the CUDA-graph executor's static-shape step, run eagerly
}


@pytest.fixture(scope="module", params=list(EXECUTORS))
def model(rar, request) -> Executor:
    """Every sampler test runs on each executor."""
    return EXECUTORS[request.param](rar)


def _orders(*seeds: int | None) -> torch.Tensor:
    """One row per entry: None is raster order, an int a seeded random permutation."""
    rows = [
        torch.arange(L)
        if s is None
        else torch.randperm(L, generator=torch.Generator().manual_seed(s))
        for s in seeds
    ]
    return torch.stack(rows)


def _run(model, labels, orders, config, seed=0) -> list:
    return list(stream(model, torch.as_tensor(labels), orders, config, seed))


def test_random_model_is_not_trivial(rar) -> None:
    """Guards the other tests: logits must depend on the class and on the context."""
    orders = _orders(1, 1)
    tokens = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = rar(tokens, torch.tensor([0, 1]), orders)
        b = rar(tokens.roll(1, 1), torch.tensor([0, 0]), orders)
    assert a[:, 0].std(-1).min() > 0.1  # not constant over the vocabulary
    assert not torch.allclose(a[0, 0], a[1, 0])  # class matters
    assert not torch.allclose(a[0, 5], b[0, 5])  # context matters


# --- event stream ---------------------------------------------------------------------------


@pytest.mark.parametrize("config", [GREEDY, SAMPLE, SAMPLE.with_(guidance_scale=3.0)])
def test_stream_events_follow_the_orders(model, config) -> None:
    orders = _orders(None, 3, 4)
    events = _run(model, [0, 2, 4], orders, config)
    assert [e.step for e in events] == list(range(L))
    assert [e.done for e in events] == [False] * (L - 1) + [True]
    for e in events:
        assert e.num_steps == L
        assert torch.equal(e.positions, orders[:, e.step])
        assert e.tokens.shape == e.probs.shape == e.entropy.shape == (3,)
        assert ((0 <= e.tokens) & (e.tokens < V)).all()
        # The canvas holds exactly the positions of steps 0..step, each with its token.
        filled = torch.zeros(3, L, dtype=torch.bool)
        filled.scatter_(1, orders[:, : e.step + 1], True)
        assert torch.equal(e.canvas >= 0, filled)
        assert (e.canvas[~filled] == -1).all()
        assert torch.equal(e.canvas.gather(1, e.positions[:, None])[:, 0], e.tokens)
    # The final canvas is complete and holds every event's token where it was placed.
    final = events[-1].canvas
    assert (final >= 0).all()
    for e in events:
        assert torch.equal(final.gather(1, e.positions[:, None])[:, 0], e.tokens)


def test_earlier_canvases_are_snapshots(model) -> None:
    orders = _orders(7)
    events = _run(model, [1], orders, SAMPLE)  # all steps run before anything is checked
    final = events[-1].canvas
    for e in events:
        assert int((e.canvas >= 0).sum()) == e.step + 1
        known = e.canvas >= 0
        assert torch.equal(e.canvas[known], final[known])
    # Mutating a yielded canvas must not leak into the generation either.
    it = stream(model, torch.tensor([1]), orders, SAMPLE, seed=0)
    first = next(it)
    with torch.inference_mode():  # the yielded tensors are inference tensors
        first.canvas.fill_(63)
    rest = list(it)
    assert torch.equal(rest[-1].canvas, final)


def test_generate_returns_the_final_canvas(model) -> None:
    orders = _orders(None, 2)
    events = _run(model, [3, 3], orders, SAMPLE, seed=5)
    assert torch.equal(
        generate(model, torch.tensor([3, 3]), orders, SAMPLE, seed=5), events[-1].canvas
    )


@pytest.mark.parametrize("how", ["break", "close", "abandon"])
def test_stopping_early_is_clean(model, how) -> None:
    labels, orders = torch.tensor([2, 0]), _orders(None, 9)
    expected = _run(model, labels, orders, SAMPLE, seed=3)
    it = stream(model, labels, orders, SAMPLE, seed=3)
    taken = []
    for event in it:
        taken.append(event)
        if len(taken) == 5:
            break
    if how == "close":
        it.close()
        with pytest.raises(StopIteration):
            next(it)
    elif how == "abandon":
        del it
    # Inference mode is scoped to the generator's own steps, not left on in the caller.
    assert not torch.is_inference_mode_enabled()
    assert torch.is_grad_enabled()
    for got, want in zip(taken, expected, strict=False):
        assert torch.equal(got.canvas, want.canvas)
    # A new stream afterwards is unaffected by the stopped one.
    again = _run(model, labels, orders, SAMPLE, seed=3)
    assert len(again) == L
    assert torch.equal(again[-1].canvas, expected[-1].canvas)


def test_two_streams_interleaved_do_not_interfere(model) -> None:
    labels, orders = torch.tensor([1]), _orders(11)
    solo_a = _run(model, labels, orders, SAMPLE, seed=1)[-1].canvas
    solo_b = _run(model, torch.tensor([4]), _orders(None), GREEDY)[-1].canvas
    a = stream(model, labels, orders, SAMPLE, seed=1)
    b = stream(model, torch.tensor([4]), _orders(None), GREEDY)
    for ea, eb in zip(a, b, strict=True):
        last_a, last_b = ea, eb
    assert torch.equal(last_a.canvas, solo_a)
    assert torch.equal(last_b.canvas, solo_b)


# --- randomness -----------------------------------------------------------------------------


def test_fixed_seed_reproduces_and_seeds_differ(model) -> None:
    labels, orders = torch.tensor([0, 3]), _orders(None, 5)
    runs = {seed: generate(model, labels, orders, SAMPLE, seed=seed) for seed in (0, 1, 2)}
    assert torch.equal(runs[0], generate(model, labels, orders, SAMPLE, seed=0))
    assert not torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[1], runs[2])


@pytest.mark.parametrize("steps", [None, 4], ids=["one-per-step", "steps4"])
def test_a_seed_per_sample_gives_each_the_image_of_its_seed_alone(model, steps) -> None:
    """Samples of one batch with seeds of their own (several requests in one run): each as
    generated alone with its seed, guided and with several tokens per step too."""
    labels, orders = torch.tensor([0, 3, 3]), _orders(None, 5, 5)
    config = SamplingConfig(guidance_scale=3.0, steps=steps)
    batched = generate(model, labels, orders, config, seed=[4, 9, 4])
    for b, seed in enumerate([4, 9, 4]):
        alone = generate(model, labels[b : b + 1], orders[b : b + 1], config, seed=seed)
        assert torch.equal(batched[b : b + 1], alone), f"sample {b}"
    assert not torch.equal(batched[1], batched[2])  # same class and order, other seed
    with pytest.raises(ValueError, match="one seed, or one per sample"):
        stream(model, labels, orders, config, seed=[1, 2])


def test_greedy_ignores_the_seed(model) -> None:
    labels, orders = torch.tensor([0, 3]), _orders(None, 5)
    assert torch.equal(
        generate(model, labels, orders, GREEDY, seed=0),
        generate(model, labels, orders, GREEDY, seed=123),
    )


def test_global_rng_is_neither_used_nor_disturbed(model) -> None:
    labels, orders = torch.tensor([2]), _orders(6)
    torch.manual_seed(1)
    a = generate(model, labels, orders, SAMPLE, seed=4)
    after_a = torch.rand(1)
    torch.manual_seed(2)
    b = generate(model, labels, orders, SAMPLE, seed=4)
    torch.manual_seed(1)
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(1), after_a)


@pytest.mark.parametrize(
    "config",
    [GREEDY, SAMPLE, SAMPLE.with_(temperature=1.3, top_p=0.9), SAMPLE.with_(guidance_scale=4.0)],
    ids=["greedy", "sample", "top_p", "cfg"],
)
def test_batched_panels_equal_separate_runs(model, config) -> None:
    """Different orders (and classes) side by side in one batch give the same panels as
    generating each alone: every sample has its own positions and the same per-seed noise."""
    labels, orders = torch.tensor([1, 1, 4]), _orders(None, 21, 22)
    batched = generate(model, labels, orders, config, seed=8)
    for b in range(3):
        alone = generate(model, labels[b : b + 1], orders[b : b + 1], config, seed=8)
        assert torch.equal(batched[b : b + 1], alone), f"panel {b}"
    # And the panels really are different pictures.
    assert not torch.equal(batched[0], batched[1])


# --- classifier-free guidance ---------------------------------------------------------------


def test_guidance_changes_the_result(model) -> None:
    labels, orders = torch.tensor([0, 2]), _orders(None, 13)
    plain = _run(model, labels, orders, GREEDY)
    guided = _run(model, labels, orders, GREEDY.with_(guidance_scale=8.0, guidance_power=0.5))
    # Step 0 runs at scale 1, i.e. the conditional logits alone: identical first step.
    assert torch.equal(plain[0].tokens, guided[0].tokens)
    torch.testing.assert_close(plain[0].probs, guided[0].probs)
    assert not torch.equal(plain[-1].canvas, guided[-1].canvas)


def test_guidance_scale_one_equals_no_guidance(model) -> None:
    """Scale 1 at every step is uncond + (cond - uncond): the doubled batch, the null class
    and the cache sharing must reduce exactly to the unguided path."""
    labels, orders = torch.tensor([0, 4]), _orders(2, 17)
    plain = _run(model, labels, orders, SAMPLE, seed=6)
    guided = _run(model, labels, orders, SAMPLE.with_(guidance_scale=1.0), seed=6)
    assert torch.equal(plain[-1].canvas, guided[-1].canvas)
    for p, g in zip(plain, guided, strict=True):
        torch.testing.assert_close(p.probs, g.probs)
        torch.testing.assert_close(p.entropy, g.entropy)


@pytest.mark.parametrize(
    ("scale", "power"), [(16.0, 2.75), (15.5, 2.5), (6.9, 1.5), (8.0, 1.2), (3.0, 1.0), (0.5, 1.0)]
)
@pytest.mark.parametrize("num_steps", [16, 256])
def test_guidance_schedule(scale, power, num_steps) -> None:
    config = SamplingConfig(guidance_scale=scale, guidance_power=power)
    values = [guidance_scale(config, s, num_steps) for s in range(num_steps)]
    assert values[0] == 1.0
    for s, value in enumerate(values):
        want = (scale - 1) * (1 - math.cos(((s / num_steps) ** power) * math.pi)) / 2 + 1
        assert value == pytest.approx(want, rel=1e-12, abs=1e-12)
    # Monotone from 1 towards the full scale, reached at s = L (one step past the last).
    diffs = [b - a for a, b in itertools.pairwise(values)]
    assert all(d >= 0 for d in diffs) if scale >= 1 else all(d <= 0 for d in diffs)
    assert guidance_scale(config, num_steps, num_steps) == pytest.approx(scale)
    assert guidance_scale(config, num_steps // 2, num_steps) == pytest.approx(
        (scale - 1) * (1 - math.cos(0.5**power * math.pi)) / 2 + 1
    )


# --- truncation and per-step statistics -----------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_one_equals_greedy(model, seed) -> None:
    labels, orders = torch.tensor([0, 1, 2]), _orders(None, 30, 31)
    greedy = generate(model, labels, orders, GREEDY)
    events = _run(model, labels, orders, SAMPLE.with_(top_k=1, temperature=1.7), seed=seed)
    assert torch.equal(events[-1].canvas, greedy)
    assert all(torch.equal(e.probs, torch.ones(3, dtype=e.probs.dtype)) for e in events)
    assert all(torch.equal(e.entropy, torch.zeros(3, dtype=e.entropy.dtype)) for e in events)


def test_top_k_sampling_stays_within_the_top_k(model, rar) -> None:
    """Every sampled token is among the k most likely under the model's own logits."""
    labels, orders, k = torch.tensor([0, 3]), _orders(40, 41), 3
    canvas = generate(model, labels, orders, SAMPLE.with_(top_k=k, temperature=5.0), seed=2)
    with torch.no_grad():
        logits = rar(canvas, labels, orders)[:, :L]  # row i: logits of step i
    chosen = canvas.gather(1, orders)
    top = logits.topk(k, dim=-1).indices
    assert (top == chosen[..., None]).any(-1).all()


@pytest.mark.parametrize("k", [1, 2, 5, 63, 64, 100])
def test_filter_logits_top_k(k) -> None:
    logits = torch.randn(4, 64, generator=torch.Generator().manual_seed(k))
    out = filter_logits(logits, top_k=k, top_p=None)
    kept = torch.isfinite(out)
    assert (kept.sum(-1) == min(k, 64)).all()
    expected = torch.zeros_like(kept).scatter_(1, logits.topk(min(k, 64), -1).indices, True)
    assert torch.equal(kept, expected)
    assert torch.equal(out[kept], logits[kept])  # survivors are untouched
    assert (out[~kept] == -math.inf).all()


@pytest.mark.parametrize(
    ("top_p", "nucleus"),
    [(0.3, {0}), (0.5, {0}), (0.7, {0, 1}), (0.85, {0, 1, 2}), (0.99, {0, 1, 2, 3}), (1.0, None)],
)
def test_filter_logits_top_p_known_distribution(top_p, nucleus) -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    perm = torch.tensor([2, 0, 3, 1])  # shuffled, so the mask must be scattered back
    out = filter_logits(probs.log()[perm][None], top_k=None, top_p=top_p)[0]
    kept = {int(perm[i]) for i in torch.isfinite(out).nonzero()[:, 0]}
    assert kept == (nucleus or {0, 1, 2, 3})


@pytest.mark.parametrize("top_p", [0.05, 0.2, 0.5, 0.8, 0.95])
def test_filter_logits_top_p_is_the_smallest_nucleus(top_p) -> None:
    logits = torch.randn(6, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kept = torch.isfinite(filter_logits(logits, top_k=None, top_p=top_p))
    probs = logits.softmax(-1)
    for b in range(6):
        order = probs[b].argsort(descending=True).tolist()
        mass, want = 0.0, set()
        for i in order:  # the most likely tokens, until their mass reaches top_p
            want.add(i)
            mass += probs[b, i].item()
            if mass >= top_p:
                break
        assert set(kept[b].nonzero()[:, 0].tolist()) == want
        assert probs[b, kept[b]].sum() >= top_p
        assert probs[b, kept[b]].sum() - probs[b, kept[b]].min() < top_p


def test_filter_logits_top_k_then_top_p_renormalises() -> None:
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    # Within the top 2 (0.4, 0.3 -> 4/7, 3/7), a 0.5 nucleus needs only the first token,
    # a 0.6 nucleus needs both.
    assert torch.isfinite(filter_logits(probs.log(), top_k=2, top_p=0.5)).sum() == 1
    assert torch.isfinite(filter_logits(probs.log(), top_k=2, top_p=0.6)).sum() == 2


@pytest.mark.parametrize(
    "config",
    [
        GREEDY,
        SAMPLE,
        SAMPLE.with_(temperature=0.3),
        SAMPLE.with_(top_k=4),
        SAMPLE.with_(top_p=0.6),
        SAMPLE.with_(guidance_scale=5.0, guidance_power=1.5),
    ],
    ids=["greedy", "sample", "cold", "top_k", "top_p", "cfg"],
)
def test_probs_and_entropy_are_valid(model, config) -> None:
    events = _run(model, [0, 1], _orders(None, 50), config, seed=1)
    for e in events:
        assert ((e.probs > 0) & (e.probs <= 1)).all()
        assert ((e.entropy >= 0) & (e.entropy <= math.log(V) + 1e-9)).all()
    if config.top_k:
        assert all((e.entropy <= math.log(config.top_k) + 1e-9).all() for e in events)


def test_greedy_probs_are_the_maximum_and_temperature_sharpens(model, rar) -> None:
    labels, orders = torch.tensor([0]), _orders(60)
    hot = _run(model, labels, orders, GREEDY.with_(temperature=2.0))
    cold = _run(model, labels, orders, GREEDY.with_(temperature=0.5))
    # Temperature does not change the argmax, only the distribution reported with it.
    assert torch.equal(hot[-1].canvas, cold[-1].canvas)
    for h, c in zip(hot, cold, strict=True):
        assert (c.probs > h.probs).all() and (c.entropy < h.entropy).all()
    # Greedy reports the probability of the argmax, the largest one.
    with torch.no_grad():
        logits = rar(cold[-1].canvas, labels, orders)[0, :L] / 0.5
    want = logits.softmax(-1).max(-1).values
    torch.testing.assert_close(torch.stack([e.probs[0] for e in cold]), want)


# --- the two model paths agree --------------------------------------------------------------


@pytest.mark.parametrize("labels", [[0, 4], [3, 3]])
def test_kv_cached_stream_equals_teacher_forced_argmax(model, rar, labels) -> None:
    """Greedy, no CFG: step by step, fill the argmax of the teacher-forced forward pass
    (rar(tokens, labels, orders), row i predicting the position of step i). The KV-cached
    stream must pick the same token at every step, and report the same probability."""
    labels, orders = torch.tensor(labels), _orders(70, None)
    events = _run(model, labels, orders, GREEDY)
    tokens = torch.zeros(2, L, dtype=torch.long)  # unfilled positions are never attended to
    rows = torch.arange(2)
    with torch.no_grad():
        for step in range(L):
            logits = rar(tokens, labels, orders)[:, step]
            choice = logits.argmax(-1)
            tokens[rows, orders[:, step]] = choice
            assert torch.equal(events[step].tokens, choice), f"step {step}"
            torch.testing.assert_close(
                events[step].probs, logits.softmax(-1).max(-1).values, rtol=1e-9, atol=1e-12
            )
    assert torch.equal(events[-1].canvas, tokens)


# --- input validation -----------------------------------------------------------------------


@pytest.mark.parametrize("labels", [[-1, 0], [0, C], [0, C + 7], [[0], [1]], [0, 1, 2]], ids=str)
def test_invalid_labels_raise(model, labels) -> None:
    with pytest.raises(ValueError):  # at the call, not at the first step
        stream(model, torch.tensor(labels), _orders(None, 1), SAMPLE)


@pytest.mark.parametrize(
    "orders",
    [
        torch.arange(L - 1)[None],
        torch.arange(L + 1)[None],
        torch.arange(L)[None, :8],
        torch.cat([torch.arange(L - 1), torch.tensor([0])])[None],  # repeats 0, misses L-1
        torch.cat([torch.arange(L - 1), torch.tensor([L])])[None],  # out of range
        (torch.arange(L) - 1)[None],  # negative
        torch.arange(L, dtype=torch.float32)[None],
    ],
    ids=["short", "long", "half", "repeat", "too_big", "negative", "float"],
)
def test_invalid_orders_raise(model, orders) -> None:
    with pytest.raises(ValueError):
        stream(model, torch.tensor([0]), orders, SAMPLE)


# --- several tokens per step (parallel decoding) ---------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("steps", [1, 2, 5, 16, 64, 256])
def test_tokens_per_step_cover_every_token_once(schedule, steps) -> None:
    counts = tokens_per_step(schedule, steps, 256)
    assert len(counts) == steps and sum(counts) == 256 and min(counts) >= 1


def test_the_cosine_schedule_starts_small_and_grows() -> None:
    counts = tokens_per_step("cosine", 16, 256)
    assert counts[0] <= 2 and counts[-1] >= 20
    assert counts == sorted(counts)
    assert tokens_per_step("constant", 5, 16) == [3, 3, 3, 3, 4]


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"schedule": "linear"}, "schedule")],
)
def test_bad_parallel_settings_raise(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**changes)


def test_more_steps_than_tokens_raise_at_the_call(model) -> None:
    with pytest.raises(ValueError, match=f"steps must be between 1 and {L}"):
        stream(model, torch.tensor([0]), _orders(None), SamplingConfig(steps=L + 1))


def test_one_token_per_step_is_todays_sampler(model) -> None:
    orders = _orders(None, 3)
    for config in (SAMPLE, GREEDY):
        a = _run(model, [1, 2], orders, config, seed=4)
        b = _run(model, [1, 2], orders, config.with_(steps=L), seed=4)
        assert all(torch.equal(x.canvas, y.canvas) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_parallel_decoding_fills_every_cell_in_its_rounds(rar, schedule) -> None:
    config = SamplingConfig(guidance_scale=3.0, steps=5, schedule=schedule)
    orders = _orders(None, 7)
    events = _run(rar, [1, 1], orders, config, seed=2)
    assert [e.step for e in events] == list(range(L))
    assert all(torch.equal(e.positions, orders[:, e.step]) for e in events)
    counts = tokens_per_step(schedule, 5, L)
    rounds = [e.round for e in events]
    assert rounds == [r for r, k in enumerate(counts) for _ in range(k)]
    assert all(e.num_rounds == 5 for e in events)
    assert (events[-1].canvas >= 0).all()
    again = _run(rar, [1, 1], orders, config, seed=2)
    assert torch.equal(again[-1].canvas, events[-1].canvas)  # seeded
    # A panel comes out the same generated alone as beside another order.
    alone = _run(rar, [1], orders[1:], config, seed=2)
    assert torch.equal(alone[-1].canvas[0], events[-1].canvas[1])


def test_parallel_greedy_tokens_are_the_argmax_of_each_querys_logits(rar) -> None:
    """Round one of a 2-step greedy run: token j is the argmax the model gives position o[j]
    right after the condition, which a sequential prefill computes for each j."""
    orders = _orders(5)
    config = SamplingConfig(greedy=True, steps=2)
    canvas = generate(rar, torch.tensor([3]), orders, config)
    for j in range(L // 2):
        cache = rar.new_cache(1)
        logits = rar.prefill(cache, torch.tensor([3]), orders[:, j])
        assert canvas[0, orders[0, j]] == logits.argmax(-1).item()


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_parallel_decoding_gives_the_same_tokens_on_every_executor(rar, schedule) -> None:
    """Rounds of real inputs and queries: the reference path, the fast path and the CUDA-graph
    executor's static rounds (run eagerly here) agree token for token, guided and sampled."""
    orders, labels = _orders(None, 4, 8), torch.tensor([0, 2, 2])
    config = SamplingConfig(guidance_scale=3.0, steps=5, schedule=schedule)
    tokens = [generate(make(rar), labels, orders, config, 3) for make in EXECUTORS.values()]
    assert all(torch.equal(t, tokens[0]) for t in tokens[1:])


# --- edits: a prompt gives some cells, the sampler generates the rest -----------------------

KEEP = torch.zeros(L, dtype=torch.bool)
KEEP[[0, 1, 4, 5, 6, 11]] = True  # 6 of the 16 cells given


def _edit(orders: torch.Tensor, keep: torch.Tensor = KEEP, seed: int = 5):
    """(orders with the kept cells first, the prompt: seeded tokens there, -1 elsewhere)."""
    tokens = torch.randint(0, V, (L,), generator=torch.Generator().manual_seed(seed))
    prompt = torch.where(keep, tokens, -1).expand(len(orders), -1).clone()
    return kept_first(orders, keep), prompt


def test_kept_first_puts_the_kept_cells_first_and_keeps_each_rows_order() -> None:
    orders = _orders(None, 3)
    edit = kept_first(orders, KEEP)
    K = int(KEEP.sum())
    assert (edit[:, :K] == torch.nonzero(KEEP).flatten()).all()
    for row, original in zip(edit, orders, strict=True):
        assert torch.equal(row[K:], original[~KEEP[original]])


@pytest.mark.parametrize(
    "config",
    [GREEDY, SAMPLE, SamplingConfig(guidance_scale=3.0), SamplingConfig(steps=4)],
    ids=["greedy", "sample", "cfg", "steps4"],
)
def test_given_cells_come_out_unchanged_and_the_rest_is_generated(model, config) -> None:
    orders, prompt = _edit(_orders(None, 3))
    K = int(KEEP.sum())
    labels = torch.tensor([1, 2])
    events = list(stream(model, labels, orders, config, 0, prompt))
    assert [e.step for e in events] == list(range(K, L))
    assert all(e.given == K and e.num_steps == L for e in events)
    assert torch.equal(events[0].canvas[:, KEEP], prompt[:, KEEP])  # shown from the first frame
    final = events[-1].canvas
    assert torch.equal(final[:, KEEP], prompt[:, KEEP]) and (final >= 0).all()
    assert not KEEP[torch.stack([e.positions for e in events])].any()
    assert torch.equal(generate(model, labels, orders, config, 0, prompt), final)


def test_an_empty_prompt_is_ordinary_generation(model) -> None:
    orders, labels = _orders(None, 3), torch.tensor([1, 2])
    empty = torch.full((2, L), -1)
    for config in (SAMPLE, SamplingConfig(guidance_scale=3.0)):
        assert torch.equal(
            generate(model, labels, orders, config, 7, empty),
            generate(model, labels, orders, config, 7),
        )


@pytest.mark.parametrize("steps", [None, 4], ids=["one-per-step", "steps4"])
def test_an_edit_gives_the_same_tokens_on_every_executor(rar, steps) -> None:
    """The kept cells prefilled in one round, then the rest: the reference path, the fast
    path and the CUDA-graph executor's static rounds agree, with and without guidance."""
    orders, prompt = _edit(_orders(9, 3))
    labels = torch.tensor([0, 3])
    for config in (SAMPLE.with_(steps=steps), SamplingConfig(guidance_scale=3.0, steps=steps)):
        edits = [
            generate(make(rar), labels, orders, config, 2, prompt) for make in EXECUTORS.values()
        ]
        assert all(torch.equal(e, edits[0]) for e in edits[1:])


def test_a_greedy_edit_is_the_teacher_forced_argmax_given_the_kept_cells(rar) -> None:
    orders, prompt = _edit(_orders(70, None))
    labels = torch.tensor([2, 0])
    canvas = generate(TorchExecutor(rar), labels, orders, GREEDY, 0, prompt)
    with torch.no_grad():
        logits = rar(canvas, labels, orders)  # (B, L + 1, V), row i predicting step i
    K = int(KEEP.sum())
    chosen = logits[:, K:L].argmax(-1)
    assert torch.equal(chosen, canvas.gather(1, orders[:, K:]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o, p: (o, p[:, :-1]), "prompt must have shape"),
        (lambda o, p: (o, p.masked_fill(p >= 0, V)), "prompt tokens must be in"),
        (lambda o, p: (o, torch.cat([p[:1], torch.full_like(p[1:], -1)])), "same number"),
        (lambda o, p: (o, p.clamp_min(0)), "nothing is left to generate"),
        (lambda o, p: (_orders(None, 3), p), "visit the prompt's cells first"),
    ],
    ids=["shape", "token", "rows", "full", "order"],
)
def test_bad_prompts_raise_before_any_work(model, change, message) -> None:
    orders, prompt = change(*_edit(_orders(None, 3)))
    with pytest.raises(ValueError, match=message):
        stream(model, torch.tensor([0, 1]), orders, SAMPLE, 0, prompt)


def test_a_guided_greedy_edit_guides_with_the_prompt_in_both_branches(rar) -> None:
    """CFG: the unconditional rows see the kept cells too. Teacher-force the result through
    the conditional and the unconditional model, each given the whole canvas: the guided
    argmax at every generated step is the token the edit chose."""
    config = SamplingConfig(greedy=True, guidance_scale=3.0, guidance_power=1.0)
    orders, prompt = _edit(_orders(70, 4))
    labels = torch.tensor([2, 0])
    canvas = generate(TorchExecutor(rar), labels, orders, config, 0, prompt)
    with torch.no_grad():
        cond = rar(canvas, labels, orders)
        uncond = rar(canvas, torch.full_like(labels, CONFIG.null_class), orders)
    K = int(KEEP.sum())
    for step in range(K, L):
        scale = guidance_scale(config, step, L)
        guided = uncond[:, step] + (cond[:, step] - uncond[:, step]) * scale
        assert torch.equal(guided.argmax(-1), canvas.gather(1, orders[:, step : step + 1])[:, 0])
