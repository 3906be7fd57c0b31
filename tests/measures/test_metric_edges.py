"""Metrics: every FLOP term by hand on small dimensions, model_dims fallbacks, edge inputs, error texts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from thinkaloud.measures.metrics import (
    early_exit_rate,
    exit_histogram,
    flop_per_token,
    flop_savings,
    model_dims,
    target_histogram,
)

# Small enough that each term is a visible number: h=2, I=3, 2 query heads and 1 KV head of size 3, V=5, L=4.
DIMS = dict(hidden=2, intermediate=3, n_heads=2, n_kv_heads=1, head_dim=3, vocab=5, num_layers=4)
# 2 FLOPs per multiply-add; RMSNorm 4 FLOPs per element:
NORM = 4 * 2  # 8
FULL = 2 * NORM + 2 * (2 * 2 * 6) + 2 * (2 * 2 * 3) + 3 * (2 * 2 * 3)  # norms + Q,O + K,V + gate/up/down = 124
PER_CTX = 2 * (2 * 6)  # scores and weighted values over 2 heads × 3 dims, per context position = 24
FROZEN = NORM + 2 * (2 * 2 * 3)  # input norm + K,V of the frozen state = 32
FIXED = NORM + 2 * 2 * 5  # final norm + unembedding = 28


@pytest.mark.parametrize("exit_layer, context", [(1, 7), (2, 7), (4, 7), (4, 0), (3, 100)])
def test_flop_per_token_by_hand(exit_layer, context):
    expected = exit_layer * (FULL + PER_CTX * context) + (4 - exit_layer) * FROZEN + FIXED
    assert flop_per_token(**DIMS, context=context, exit_layer=exit_layer) == expected


def test_flop_savings_by_hand():
    assert flop_per_token(**DIMS, context=7, exit_layer=1) == 124 + 24 * 7 + 3 * 32 + 28 == 416
    assert flop_per_token(**DIMS, context=7, exit_layer=4) == 4 * (124 + 24 * 7) + 28 == 1196
    assert flop_savings([1, 4], **DIMS, context=7) == pytest.approx(1 - (416 + 1196) / (2 * 1196))
    with pytest.raises(ValueError, match="context has 1 entries, exit layers have 2"):
        flop_savings([1, 4], **DIMS, context=[7])
    with pytest.raises(ValueError, match=r"exit_layer must lie in 1\.\.4, got 5"):
        flop_per_token(**DIMS, context=7, exit_layer=5)


def test_model_dims_fallbacks_and_explicit_head_dim():
    plain = SimpleNamespace(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, vocab_size=97, num_hidden_layers=6
    )  # no head_dim, no num_key_value_heads (multi-head attention)
    assert model_dims(plain) == dict(
        hidden=32, intermediate=64, n_heads=4, n_kv_heads=4, head_dim=8, vocab=97, num_layers=6
    )
    explicit = SimpleNamespace(**vars(plain), head_dim=16, num_key_value_heads=2)  # as Qwen3: head_dim ≠ C / H
    assert model_dims(explicit)["head_dim"] == 16 and model_dims(explicit)["n_kv_heads"] == 2


def test_error_messages_name_the_problem():
    with pytest.raises(ValueError, match=r"no tokens to measure \(empty exit layers or all masked\)"):
        early_exit_rate([5, 30], 30, mask=[0, 0])
    with pytest.raises(ValueError, match=r"integers in 1\.\.30; got e\.g\. \[.*31"):
        early_exit_rate([5, 31], 30)
    with pytest.raises(ValueError, match="mask has 1 entries, values have 2"):
        early_exit_rate([5, 30], 30, mask=[1])
    with pytest.raises(ValueError, match=r"1 tokens exit at layers \[7\], outside the support"):
        exit_histogram([5, 7], [5, 10], num_layers=30)


def test_target_histogram_edges():
    log_t = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]], dtype=torch.float64))
    assert target_histogram(log_t[:1], [5, 10, 30]) == pytest.approx({5: 0.5, 10: 0.25, 30: 0.25})  # one token
    for shaped in (log_t, log_t[None]):  # (N, m+1) and (B, T, m+1): the columns are the last axis
        with pytest.raises(ValueError, match="log_targets has 3 columns, layers has 4 entries"):
            target_histogram(shaped, [5, 10, 15, 30])
    with pytest.raises(ValueError, match="mask has 3 entries, log_targets has 2 rows"):
        target_histogram(log_t, [5, 10, 30], mask=[1, 0, 1])
    with pytest.raises(ValueError, match=r"no tokens to measure \(empty log_targets or all masked\)"):
        target_histogram(log_t, [5, 10, 30], mask=[0, 0])
