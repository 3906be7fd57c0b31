"""Learn-then-Test statistics: Hoeffding–Bentkus p-values, fixed-sequence testing, and a simulation of the
guarantee with synthetic losses whose true risk curve is known."""

from __future__ import annotations

import math

import pytest
import torch

from thinkaloud.risk.ltt import binomial_cdf, fixed_sequence, hb_p_value, learn_then_test


def test_binomial_cdf_matches_the_sum_of_terms():
    # P(Bin(10, 0.2) <= 1) = 0.8^10 + 10 · 0.2 · 0.8^9
    assert binomial_cdf(1, 10, 0.2) == pytest.approx(0.8**10 + 10 * 0.2 * 0.8**9, rel=1e-12)
    exact = sum(math.comb(100, i) * 0.1**i * 0.9 ** (100 - i) for i in range(6))
    assert binomial_cdf(5, 100, 0.1) == pytest.approx(exact, rel=1e-10)
    assert binomial_cdf(-1, 10, 0.5) == 0.0 and binomial_cdf(10, 10, 0.5) == 1.0


@pytest.mark.parametrize(
    "risk_hat, n, eps, binary, expected",
    [
        # R̂ = 0: Hoeffding term exp(−n·log(1/(1−ε))) = 0.9^10; Bentkus e·0.9^10 (or 0.9^10 for 0/1 losses).
        (0.0, 10, 0.1, False, 0.9**10),
        (0.0, 10, 0.1, True, 0.9**10),
        # R̂ = 0.1, ε = 0.2, n = 10: h1 = 0.1·ln 0.5 + 0.9·ln(0.9/0.8) = 0.0366900 → exp(−0.366900) = 0.692879;
        # Bentkus e · (0.8^10 + 2·0.8^9) = e · 0.375810 = 1.02156 → Hoeffding wins; for 0/1 losses 0.375810.
        (0.1, 10, 0.2, False, 0.6928788322),
        (0.1, 10, 0.2, True, 0.3758096384),
        # R̂ = 0.05, ε = 0.1, n = 100: Hoeffding exp(−100·0.0167068) = 0.188125; Bentkus e · P(Bin(100, 0.1) <= 5)
        # = e · 0.0575769 = 0.156510 → Bentkus wins.
        (0.05, 100, 0.1, False, 0.1565102043),
        # R̂ >= ε: Hoeffding is 1 and e · P(Bin(100, 0.2) <= 20) = e · 0.559462 > 1 → capped at 1.
        (0.2, 100, 0.2, False, 1.0),
        (0.2, 100, 0.2, True, 0.5594615849),
        (0.9, 100, 0.2, False, 1.0),
    ],
)
def test_hb_p_value_hand_computed(risk_hat, n, eps, binary, expected):
    assert hb_p_value(risk_hat, n, eps, binary) == pytest.approx(expected, rel=1e-8)


def test_hb_p_value_counts_k_over_n_as_k():
    # 3/10 must give ⌈n·R̂⌉ = 3, not 4 through round-off (0.3 · 10 = 3.0000000000000004).
    assert hb_p_value(0.3, 10, 0.5, True) == pytest.approx(binomial_cdf(3, 10, 0.5))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="epsilon"):
        hb_p_value(0.1, 10, 0.0)
    with pytest.raises(ValueError, match="empirical risk"):
        hb_p_value(1.5, 10, 0.1)
    with pytest.raises(ValueError, match="delta"):
        fixed_sequence([0.01], 1.0)
    with pytest.raises(ValueError, match="same"):
        learn_then_test([[0.0, 0.0], [0.0]], 0.1, 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        learn_then_test([[0.0, 2.0]], 0.1, 0.1)


def test_fixed_sequence_stops_at_the_first_non_rejection():
    assert fixed_sequence([0.01, 0.05, 0.2, 0.01, 0.0], 0.1) == 2
    assert fixed_sequence([0.5, 0.0, 0.0], 0.1) == 0
    assert fixed_sequence([0.1, 0.1], 0.1) == 2  # p <= δ rejects
    assert fixed_sequence([0.01, float("nan"), 0.0], 0.1) == 1
    # A later setting with zero empirical risk is never chosen once an earlier one failed.
    n = 50
    losses = [[0.0] * n, [1.0] * 20 + [0.0] * 30, [0.0] * n]
    result = learn_then_test(losses, epsilon=0.1, delta=0.1, binary=True)
    assert result.risks == [0.0, 0.4, 0.0]
    assert result.p_values[2] <= 0.1 and result.rejected == 1 and result.chosen == 0
    nothing = learn_then_test([[1.0] * n, [0.0] * n], epsilon=0.1, delta=0.1, binary=True)
    assert nothing.rejected == 0 and nothing.chosen is None


# ---------------------------------------------------------------------------------------------------
# Simulation: setting j has true risk r_j = j/50 (0 … 0.5); per draw, each item has a latent u ~ U(0, 1)
# and loss 1[u < r_j] (0/1 losses) or 2·r_j·u (losses in [0, 1]): mean r_j either way, monotone in j.

TRUE_RISK = torch.arange(26, dtype=torch.float64) / 50  # (K,)


def _draw(n: int, binary: bool, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=generator, dtype=torch.float64)  # (n,)
    if binary:
        return (u[None, :] < TRUE_RISK[:, None]).double()  # (K, n)
    return 2 * TRUE_RISK[:, None] * u[None, :]  # (K, n)


def _naive(losses: torch.Tensor, eps: float) -> int | None:
    """The most aggressive leading setting with empirical risk <= ε: what one picks without a guarantee."""
    ok = (losses.mean(1) <= eps).tolist()
    j = ok.index(False) if False in ok else len(ok)
    return j - 1 if j else None


@pytest.mark.parametrize("binary", [True, False])
def test_chosen_setting_controls_the_risk_over_many_calibration_draws(binary):
    draws, n, eps, delta = 500, 100, 0.21, 0.1
    generator = torch.Generator().manual_seed(1)
    violations = naive_violations = 0
    for _ in range(draws):
        losses = _draw(n, binary, generator)
        chosen = learn_then_test(losses.tolist(), eps, delta, binary=binary).chosen
        violations += chosen is not None and TRUE_RISK[chosen] > eps
        naive = _naive(losses, eps)
        naive_violations += naive is not None and TRUE_RISK[naive] > eps
    slack = 3 * math.sqrt(delta * (1 - delta) / draws)  # Monte-Carlo error of a rate near δ
    assert violations / draws <= delta + slack
    assert naive_violations / draws > delta + slack  # the simulation can see a violation when there is one


@pytest.mark.parametrize("binary", [True, False])
def test_with_a_generous_epsilon_the_choice_is_near_the_true_optimum(binary):
    draws, n, eps, delta = 200, 1000, 0.31, 0.1
    best = int((TRUE_RISK <= eps).nonzero().max())  # j* = 15 (true risk 0.30)
    generator = torch.Generator().manual_seed(2)
    chosen = [
        learn_then_test(_draw(n, binary, generator).tolist(), eps, delta, binary=binary).chosen for _ in range(draws)
    ]
    assert all(c is not None for c in chosen)
    # The Hoeffding–Bentkus margin at n = 1000, δ = 0.1 is about 0.03 of risk: at most two grid steps.
    near = sum(best - 2 <= c <= best for c in chosen) / draws
    assert near >= 0.9
    assert sum(c > best for c in chosen) / draws <= delta
