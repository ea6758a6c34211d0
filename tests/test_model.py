"""RAR's decoding step on the official fixture's weights (fp32): parallel decoding's queries
are exact, and leave the KV cache as a sequential decode would."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import TINY_RAR, fixture_model, parity_fixtures, randomized, read_fixture

from rar_demo.config import RARConfig
from rar_demo.model import (
    PREFIX,
    RAR,
    cat_inputs,
    decode_inputs,
    prefill_inputs,
    query_inputs,
)

ATOL = 1e-5
N = 4  # tokens of context before the round under test


@pytest.fixture(scope="module")
def case() -> tuple[RAR, torch.Tensor, torch.Tensor, torch.Tensor]:
    spec, t = read_fixture(parity_fixtures("rar")[0])
    model = fixture_model(RAR, RARConfig.from_dict(spec["config"]), t, torch.float32)
    B, L = t["input_ids"].shape
    orders = torch.stack(
        [torch.randperm(L, generator=torch.Generator().manual_seed(b)) for b in range(B)]
    )
    tokens = t["input_ids"].gather(1, orders)  # in generation order
    labels = t["class_labels"]
    return model, tokens, orders, labels


def _sequential(model: RAR, tokens, orders, labels, last_target):
    """Prefill, then the N context tokens one at a time, the last one told `last_target`:
    (logits after it, the cache)."""
    cache = model.new_cache(len(labels))
    logits = model.prefill(cache, labels, orders[:, 0] if N else last_target)
    for i in range(N):
        target = orders[:, i + 1] if i + 1 < N else last_target
        logits = model.decode_step(cache, i + 1, tokens[:, i], orders[:, i], target, labels)
    return logits, cache


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
def test_queries_give_the_logits_of_a_sequential_decode_that_visits_their_position_next(
    case, fast: bool
) -> None:
    model, tokens, orders, labels = case
    # Round 1: cls and condition, plus queries for positions 1..3 of the order.
    cache = model.new_cache(len(labels))
    if fast:
        cache.modulation = model.precompute_modulation(labels)
    real = prefill_inputs(model.config, labels, orders[:, 0])
    first = model.decode_round(
        cache, 0, cat_inputs(real, query_inputs(real, orders[:, 1:4])), 3, labels
    )
    for j in range(4):
        alone = model.new_cache(len(labels))
        expected = model.prefill(alone, labels, orders[:, j])
        torch.testing.assert_close(first[:, j], expected, atol=ATOL, rtol=0)
    # Round 2: the first N tokens as real inputs (the last told position N), queries N+1, N+2.
    real = decode_inputs(tokens[:, :N], orders[:, :N], orders[:, 1 : N + 1])
    inputs = cat_inputs(real, query_inputs(real, orders[:, N + 1 : N + 3]))
    second = model.decode_round(cache, PREFIX, inputs, 2, labels)
    assert second.shape == (len(labels), 3, model.config.codebook_size)
    for j in range(3):
        expected, _ = _sequential(model, tokens, orders, labels, orders[:, N + j])
        torch.testing.assert_close(second[:, j], expected, atol=ATOL, rtol=0)


def test_queries_leave_the_cache_as_a_sequential_run_would(case) -> None:
    model, tokens, orders, labels = case
    cache = model.new_cache(len(labels))
    model.decode_round(cache, 0, prefill_inputs(model.config, labels, orders[:, 0]), 0, labels)
    real = decode_inputs(tokens[:, :N], orders[:, :N], orders[:, 1 : N + 1])
    model.decode_round(
        cache, PREFIX, cat_inputs(real, query_inputs(real, orders[:, N + 1 : N + 4])), 3, labels
    )
    _, sequential = _sequential(model, tokens, orders, labels, orders[:, N])
    written = PREFIX + N
    torch.testing.assert_close(
        cache.k[..., :written, :], sequential.k[..., :written, :], atol=ATOL, rtol=0
    )
    torch.testing.assert_close(
        cache.v[..., :written, :], sequential.v[..., :written, :], atol=ATOL, rtol=0
    )
    assert not cache.k[..., written:, :].any() and not cache.v[..., written:, :].any()


def test_a_round_without_queries_is_the_decode_step(case) -> None:
    model, tokens, orders, labels = case
    a, b = model.new_cache(len(labels)), model.new_cache(len(labels))
    first = model.prefill(a, labels, orders[:, 0])
    assert torch.equal(
        first,
        model.decode_round(b, 0, prefill_inputs(model.config, labels, orders[:, 0]), 0, labels)[
            :, 0
        ],
    )
    step = model.decode_step(a, 1, tokens[:, 0], orders[:, 0], orders[:, 1], labels)
    round_ = model.decode_round(
        b, PREFIX, decode_inputs(tokens[:, 0], orders[:, 0], orders[:, 1]), 0, labels
    )
    assert torch.equal(step, round_[:, 0]) and torch.equal(a.k, b.k)


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
@pytest.mark.parametrize("K", [1, 7])
def test_an_edits_batched_prefill_matches_forward_and_a_step_by_step_feed(
    case, fast: bool, K: int
) -> None:
    """An edit's K given tokens, teacher-forced in one round with cls and the condition, give
    the logits RAR.forward gives at step K, and leave the cache a token-by-token feed leaves."""
    model, tokens, orders, labels = case
    K = min(K, tokens.shape[1] - 1)
    cache = model.new_cache(len(labels))
    if fast:
        cache.modulation = model.precompute_modulation(labels)
    real = cat_inputs(
        prefill_inputs(model.config, labels, orders[:, 0]),
        decode_inputs(tokens[:, :K], orders[:, :K], orders[:, 1 : K + 1]),
    )
    batched = model.decode_round(cache, 0, real, 0, labels)[:, 0]
    by_raster = torch.empty_like(tokens).scatter_(1, orders, tokens)
    with torch.no_grad():
        forward = model(by_raster, labels, orders)[:, K]
    torch.testing.assert_close(batched, forward, atol=ATOL, rtol=0)
    stepwise = model.new_cache(len(labels))
    logits = model.prefill(stepwise, labels, orders[:, 0])
    for i in range(K):
        logits = model.decode_step(
            stepwise, i + 1, tokens[:, i], orders[:, i], orders[:, i + 1], labels
        )
    torch.testing.assert_close(batched, logits, atol=ATOL, rtol=0)
    written = PREFIX + K
    torch.testing.assert_close(
        cache.k[..., :written, :], stepwise.k[..., :written, :], atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("labels", [[3, 1, 4, 0], [2, 2, 2, 5]], ids=["distinct", "repeated"])
def test_forward_gives_each_sample_the_logits_it_gets_alone(labels: list[int]) -> None:
    """forward runs adaLN once per distinct label when labels repeat, and per sample when they
    are mostly distinct: either way each row is that sample's own."""
    torch.manual_seed(0)
    model = randomized(RAR(replace(TINY_RAR, condition_num_classes=6))).eval()  # adaLN-Zero: not 0
    labels = torch.tensor(labels)
    L = model.config.image_seq_len
    tokens = torch.randint(0, model.config.codebook_size, (4, L))
    orders = torch.stack([torch.randperm(L) for _ in range(4)])
    batched = model(tokens, labels, orders)
    alone = torch.cat(
        [model(tokens[b : b + 1], labels[b : b + 1], orders[b : b + 1]) for b in range(4)]
    )
    torch.testing.assert_close(batched, alone, atol=ATOL, rtol=0)
