"""Pure exit maths: stick-breaking and the calibration targets, against hand-computed values."""

import math

import pytest
import torch

from thinkaloud.model.exits import exit_index, exit_log_distribution, exit_targets


def test_exit_targets_hand_values():
    # D = ln 3 at both layers, F = 1: q* = 2σ(−ln 3) = 2 · 1/4 = 1/2 → P = [1/2, 1/4, 1/4].
    d = torch.tensor([math.log(3.0), math.log(3.0)])
    torch.testing.assert_close(exit_targets(d, 1.0).exp(), torch.tensor([0.5, 0.25, 0.25]))
    # F = 2, D = ln 3 / 2 gives the same x = F·D.
    torch.testing.assert_close(exit_targets(d / 2, 2.0).exp(), torch.tensor([0.5, 0.25, 0.25]))
    # D = [1, 2], F = 1: q1 = 2σ(−1) = 0.537883, q2 = 2σ(−2) = 0.238406.
    q1, q2 = 2 / (1 + math.e), 2 / (1 + math.e**2)
    expected = torch.tensor([q1, (1 - q1) * q2, (1 - q1) * (1 - q2)])
    torch.testing.assert_close(exit_targets(torch.tensor([1.0, 2.0]), 1.0).exp(), expected)


def test_exit_targets_limits():
    # D = 0 → q* = 1: certain exit at the first layer whose D is 0.
    t = exit_targets(torch.tensor([0.5, 0.0, 0.0]), 1.0).exp()
    q1 = 2 / (1 + math.exp(0.5))
    torch.testing.assert_close(t, torch.tensor([q1, 1 - q1, 0.0, 0.0]))
    # Huge D → never exit; tiny negative D counts as 0.
    torch.testing.assert_close(exit_targets(torch.tensor([1e6, 1e6]), 1.0).exp(), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(exit_targets(torch.tensor([-1e-7, 5.0]), 1.0).exp(), torch.tensor([1.0, 0.0, 0.0]))


@pytest.mark.parametrize("kl_factor", [0.0, -1.0, float("nan")])
def test_exit_targets_reject_kl_factor_not_positive(kl_factor):
    # F = 0 would send every token to the first exit layer whatever its KL; F < 0 gives q* > 1.
    with pytest.raises(ValueError, match="kl_factor must be > 0"):
        exit_targets(torch.tensor([3.0, 3.0]), kl_factor)


def test_exit_targets_sum_to_one_and_order_in_kl_factor():
    g = torch.Generator().manual_seed(0)
    kl = torch.rand(64, 5, generator=g) * 4
    for f in (0.25, 1.0, 4.0):
        t = exit_targets(kl, f)
        assert not torch.isnan(t).any()
        torch.testing.assert_close(t.exp().sum(-1), torch.ones(64))
    # Lower KL factor → more mass on early exits (less on "no exit").
    no_exit = [exit_targets(kl, f).exp()[:, -1].mean().item() for f in (0.25, 1.0, 4.0)]
    assert no_exit[0] < no_exit[1] < no_exit[2]


def test_exit_distribution_hand_values_and_limits():
    z = torch.tensor([0.0, math.log(3.0)])  # q = [1/2, 3/4]
    torch.testing.assert_close(exit_log_distribution(z).exp(), torch.tensor([0.5, 0.375, 0.125]))
    torch.testing.assert_close(exit_log_distribution(z, offset=-math.inf).exp(), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(exit_log_distribution(z, offset=math.inf).exp(), torch.tensor([1.0, 0.0, 0.0]))
    big = exit_log_distribution(torch.tensor([50.0, -80.0]), offset=1e5)
    assert not torch.isnan(big).any()


def test_exit_index():
    idx = exit_index(torch.tensor([[5, 30, 10]]), [5, 10, 15], 30)
    assert idx.tolist() == [[0, 3, 1]]
