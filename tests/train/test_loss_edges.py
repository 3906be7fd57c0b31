"""Stage-1 loss functions at their edges: degenerate mean targets, seeded draws, signs, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from thinkaloud.model.exits import exit_log_distribution
from thinkaloud.train import losses


@pytest.mark.parametrize("target", [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
def test_hazard_init_of_degenerate_targets_is_finite_and_close(target):
    """Hazards of exactly 0 or 1 (a layer nobody exits at, or everybody does) are clamped away from
    ±inf, and the biases still reproduce the target to within the clamp."""
    target = torch.tensor(target)
    bias = losses.hazard_bias_init(target)
    assert torch.isfinite(bias).all(), bias
    torch.testing.assert_close(exit_log_distribution(bias).exp(), target, atol=1e-3, rtol=0)


def test_exit_draws_follow_the_generator():
    log_t = torch.log(torch.tensor([[0.2, 0.3, 0.5]] * 50))
    draw = lambda seed: losses.sample_exit_index(log_t, 4, torch.Generator().manual_seed(seed))
    torch.manual_seed(123)
    a = draw(7)
    torch.manual_seed(456)  # the global RNG must not matter
    assert torch.equal(a, draw(7))
    assert not torch.equal(a, draw(8))
    assert a.shape == (4, 50)


def test_exit_cross_entropy_is_the_negative_log_probability():
    logp = torch.log(torch.tensor([0.5, 0.25, 1.0]))
    torch.testing.assert_close(losses.exit_cross_entropy(logp), torch.tensor([math.log(2), math.log(4), 0.0]))


def test_distill_kl_rejects_an_unknown_direction():
    t = torch.log_softmax(torch.zeros(1, 3), -1)
    with pytest.raises(ValueError, match="direction must be 'forward' or 'reverse', got 'both'"):
        losses.distill_kl(t, torch.zeros(1, 3), "both")
