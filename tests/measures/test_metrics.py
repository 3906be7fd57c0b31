"""Metrics on exit layers: hand-computed values, masks, ragged lists, FLOP sanity."""

import math

import pytest
import torch

from thinkaloud.measures.metrics import (
    average_layer_savings,
    early_exit_rate,
    exit_histogram,
    flop_per_token,
    flop_savings,
    mean_depth_fraction,
    model_dims,
    target_histogram,
    tv_distance,
)

L = 30
E = [5, 10, 15, 20, 25]
# Qwen2.5-1.5B-like dimensions (28 layers).
DIMS = dict(hidden=1536, intermediate=8960, n_heads=12, n_kv_heads=2, head_dim=128, vocab=151936, num_layers=28)


def test_rates_hand_computed():
    layers = [5, 30, 10, 30]  # two early exits out of four
    assert early_exit_rate(layers, L) == pytest.approx(0.5)
    # ALS = mean((30-5)/30, 0, (30-10)/30, 0) = (25 + 20) / 120
    assert average_layer_savings(layers, L) == pytest.approx(45 / 120)
    assert mean_depth_fraction(layers, L) == pytest.approx(1 - 45 / 120)


def test_tensor_with_mask_equals_ragged_list():
    t = torch.tensor([[5, 30, 30], [15, 25, 30]])  # (B, T), last token of row 0 is padding
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    ragged = [[5, 30], [15, 25, 30]]
    for fn in (early_exit_rate, average_layer_savings, mean_depth_fraction):
        assert fn(t, L, mask=mask) == pytest.approx(fn(ragged, L))
    assert early_exit_rate(ragged, L) == pytest.approx(3 / 5)
    assert average_layer_savings(ragged, L) == pytest.approx((25 + 15 + 5) / (5 * 30))


def test_no_exit_everywhere_is_zero():
    assert early_exit_rate([L] * 7, L) == 0.0
    assert average_layer_savings([L] * 7, L) == 0.0


def test_invalid_inputs_raise():
    with pytest.raises(ValueError):
        early_exit_rate([], L)
    with pytest.raises(ValueError):
        average_layer_savings([31], L)
    with pytest.raises(ValueError):
        average_layer_savings([0], L)
    with pytest.raises(ValueError):
        early_exit_rate([5, 30], L, mask=[1])


def test_exit_histogram():
    hist = exit_histogram([5, 5, 10, 30], E, num_layers=L)
    assert hist == {5: 0.5, 10: 0.25, 15: 0.0, 20: 0.0, 25: 0.0, 30: 0.25}
    assert exit_histogram([5, 5, 10, 30], E + [L]) == hist
    assert exit_histogram(torch.tensor([[5, 30], [10, 10]]), E, mask=torch.tensor([[1, 0], [1, 1]]), num_layers=L)[
        10
    ] == (pytest.approx(2 / 3))
    with pytest.raises(ValueError, match="outside the support"):
        exit_histogram([7], E, num_layers=L)


def test_target_histogram_is_mean_of_exp():
    p1 = torch.tensor([0.5, 0.25, 0.25])
    p2 = torch.tensor([0.1, 0.1, 0.8])
    log_targets = torch.stack([p1, p2]).log()  # (N=2, m+1=3)
    hist = target_histogram(log_targets, [5, 10, 15])
    assert hist[5] == pytest.approx(0.3)
    assert hist[10] == pytest.approx(0.175)
    assert hist[15] == pytest.approx(0.525)
    assert sum(hist.values()) == pytest.approx(1.0)
    # (B, T, m+1) with a mask over (B, T)
    masked = target_histogram(torch.stack([log_targets, log_targets]), [5, 10, 15], mask=[[1, 0], [1, 0]])
    assert masked[15] == pytest.approx(0.25)


def test_tv_distance():
    assert tv_distance({5: 0.5, 30: 0.5}, {5: 0.2, 10: 0.3, 30: 0.5}) == pytest.approx(0.5 * (0.3 + 0.3))
    assert tv_distance({"5": 1.0}, {5: 1.0}) == 0.0  # JSON string keys compare with ints
    assert tv_distance({5: 1.0}, {30: 1.0}) == pytest.approx(1.0)


def test_flop_count_matches_two_flops_per_parameter():
    # With context → 0 a forward pass costs ≈ 2 × (non-embedding parameters + unembedding).
    d = DIMS
    attn = d["hidden"] * d["head_dim"] * (2 * d["n_heads"] + 2 * d["n_kv_heads"])
    mlp = 3 * d["hidden"] * d["intermediate"]
    params = d["num_layers"] * (attn + mlp) + d["hidden"] * d["vocab"]
    flops = flop_per_token(**DIMS, context=0, exit_layer=28)
    assert flops == pytest.approx(2 * params, rel=1e-3)


def test_flop_savings_sanity():
    assert flop_savings([28] * 10, **DIMS, context=512) == 0.0
    savings = [flop_savings([e] * 10, **DIMS, context=512) for e in (25, 20, 10, 5, 1)]
    assert all(0 < a < b < 1 for a, b in zip(savings, savings[1:]))
    per_token = [flop_per_token(**DIMS, context=512, exit_layer=e) for e in range(1, 29)]
    assert all(a < b for a, b in zip(per_token, per_token[1:]))
    # Saved share never reaches ALS: K/V above the exit and the unembedding are always paid.
    assert flop_savings([5], **DIMS, context=512) < average_layer_savings([5], 28)
    # Mixed sequence: Σ flops(ℓ) / Σ flops(L), by hand.
    mixed = flop_savings([5, 28], **DIMS, context=100)
    by_hand = 1 - (
        flop_per_token(**DIMS, context=100, exit_layer=5) + flop_per_token(**DIMS, context=100, exit_layer=28)
    ) / (2 * flop_per_token(**DIMS, context=100, exit_layer=28))
    assert mixed == pytest.approx(by_hand)


def test_flop_savings_per_token_context_and_mask():
    layers = torch.tensor([[5, 28, 28]])  # (1, T)
    ctx = torch.tensor([[10, 11, 12]])
    mask = torch.tensor([[1, 1, 0]])
    got = flop_savings(layers, **DIMS, context=ctx, mask=mask)
    spent = sum(flop_per_token(**DIMS, context=c, exit_layer=e) for e, c in [(5, 10), (28, 11)])
    full = sum(flop_per_token(**DIMS, context=c, exit_layer=28) for c in (10, 11))
    assert got == pytest.approx(1 - spent / full)
    # More context → attention dominates more → a larger share saved by the same exit.
    assert flop_savings([5], **DIMS, context=32768) > flop_savings([5], **DIMS, context=16)


def test_model_dims_from_config():
    from transformers import Qwen2Config

    cfg = Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        num_hidden_layers=3,
    )
    dims = model_dims(cfg)
    assert dims == dict(hidden=64, intermediate=128, n_heads=4, n_kv_heads=2, head_dim=16, vocab=100, num_layers=3)
    assert math.isfinite(flop_savings([1, 3], **dims, context=8))


@pytest.mark.parametrize(
    "family, expert_width, active_width",
    [
        # top-2 of 4 experts; experts narrower than the dense MLP layers (intermediate_size 64)
        ("qwen3_moe", dict(moe_intermediate_size=24), 2 * 24),
        ("gpt_oss", dict(intermediate_size=24), 2 * 24),  # its intermediate_size is the expert width
    ],
)
def test_model_dims_counts_a_mixture_of_experts_as_its_active_experts(family, expert_width, active_width):
    from tests.tiny import tiny_config

    cfg = tiny_config(family)
    for name, value in expert_width.items():
        setattr(cfg, name, value)
    dims = model_dims(cfg)
    assert dims["intermediate"] == active_width
    # each layer's MLP costs what a dense SwiGLU of the active width does: 3 matrices, 2 FLOPs per multiply-add
    L = cfg.num_hidden_layers
    no_mlp = flop_per_token(**{**dims, "intermediate": 0}, context=1, exit_layer=L)
    assert flop_per_token(**dims, context=1, exit_layer=L) - no_mlp == L * 3 * 2 * cfg.hidden_size * active_width
