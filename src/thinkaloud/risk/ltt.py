"""Learn-then-Test risk control: Hoeffding–Bentkus p-values and fixed-sequence testing (pure statistics).

Setting (Angelopoulos et al. 2021, "Learn then Test"; used for early-exit thresholds in CALM, Schuster
et al. 2022): settings λ_1, …, λ_K ordered from the most conservative to the most aggressive, and for
each a loss in [0, 1] on each of n i.i.d. calibration items; the risk is R(λ) = E[loss]. For every λ_j
the null hypothesis is H_j: R(λ_j) > ε, tested with the Hoeffding–Bentkus p-value of the empirical
risk R̂ (the mean of the n losses):

    p = min( exp(−n · h1(min(R̂, ε), ε)),  c · P(Binomial(n, ε) ≤ ⌈n R̂⌉) ),
    h1(a, b) = a log(a/b) + (1 − a) log((1 − a)/(1 − b))       (0 · log 0 = 0),

with c = e for losses anywhere in [0, 1] (Bentkus' inequality) and c = 1 for 0/1 losses, whose count of
ones is exactly binomial. The p-value is capped at 1.

Fixed-sequence testing: reject H_1, H_2, … while p_j ≤ δ and stop at the first p_j > δ. A hypothesis is
tested only once all earlier ones were rejected, so the family-wise error rate is at most δ with no
multiplicity correction: with probability ≥ 1 − δ over the calibration set, every rejected setting has
R(λ_j) ≤ ε. The chosen setting is the last one rejected (the most aggressive); if H_1 is not rejected,
nothing is chosen. Settings after the first failure are not tested, whatever their p-values.

Dependencies: none beyond the standard library (the binomial tail is summed in log space with
``math.lgamma``). MAPIE has both procedures (``compute_hoeffdding_bentkus_p_value`` and its LTT
module), but it pulls in scikit-learn and with it scipy and joblib — tens of MB of wheels — for twelve
lines of arithmetic; scipy alone (``binom.cdf``) is not one of our dependencies either. The formulas
are those of the LTT paper and of MAPIE's implementation (which also offers c = 1 for binary losses);
``tests/risk/test_ltt.py`` pins them against hand-computed values.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LTTResult", "binomial_cdf", "fixed_sequence", "hb_p_value", "learn_then_test"]


def _check_level(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")


@functools.lru_cache(maxsize=65536)
def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) ≤ k), summed exactly in log space (n up to ~10^5 is fast enough)."""
    if n < 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need n >= 0 and p in [0, 1], got n={n}, p={p}")
    if k < 0:
        return 0.0
    if k >= n or p == 0.0:
        return 1.0
    if p == 1.0:
        return 0.0
    log_p, log_q, log_nf = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    terms = [log_nf - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def _h1(a: float, b: float) -> float:
    """Bernoulli KL divergence kl(a ‖ b) = a log(a/b) + (1 − a) log((1 − a)/(1 − b)), 0 · log 0 = 0."""
    first = 0.0 if a == 0.0 else a * math.log(a / b)
    second = 0.0 if a == 1.0 else (1.0 - a) * math.log((1.0 - a) / (1.0 - b))
    return first + second


def hb_p_value(risk_hat: float, n: int, epsilon: float, binary: bool = False) -> float:
    """Hoeffding–Bentkus p-value of H: R > ε given the mean ``risk_hat`` of ``n`` losses in [0, 1].

    ``binary=True`` when every loss is 0 or 1 (the Bentkus term then drops its factor e).
    """
    _check_level("epsilon", epsilon)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= risk_hat <= 1.0 or math.isnan(risk_hat):
        raise ValueError(f"the empirical risk must lie in [0, 1] (losses are bounded), got {risk_hat}")
    hoeffding = math.exp(-n * _h1(min(risk_hat, epsilon), epsilon))
    k = math.ceil(round(n * risk_hat, 9))  # round first: n · (k/n) must not become k + 1e-15 → k + 1
    bentkus = (1.0 if binary else math.e) * binomial_cdf(k, n, epsilon)
    return min(1.0, hoeffding, bentkus)


def fixed_sequence(p_values: Sequence[float], delta: float) -> int:
    """Number of hypotheses rejected by fixed-sequence testing at level δ: the length of the leading
    run of p-values ≤ δ (testing stops at the first that is not)."""
    _check_level("delta", delta)
    for j, p in enumerate(p_values):
        if not p <= delta:  # a NaN p-value is a non-rejection too
            return j
    return len(p_values)


@dataclass
class LTTResult:
    risks: list[float]
    """Empirical risk per setting, in the order given."""
    p_values: list[float]
    """Hoeffding–Bentkus p-value per setting."""
    rejected: int
    """Settings accepted (H_j rejected): the first ``rejected`` ones."""

    @property
    def chosen(self) -> int | None:
        """Index of the chosen (most aggressive accepted) setting; None when none is accepted."""
        return self.rejected - 1 if self.rejected else None


def learn_then_test(losses: Sequence[Sequence[float]], epsilon: float, delta: float, binary: bool = False) -> LTTResult:
    """Per-setting losses (K settings × n items, conservative first) → risks, p-values and the choice."""
    _check_level("epsilon", epsilon)
    _check_level("delta", delta)
    if not losses:
        raise ValueError("no settings to test")
    n = len(losses[0])
    if n == 0 or any(len(row) != n for row in losses):
        raise ValueError(f"every setting needs the same, non-zero number of losses, got {[len(r) for r in losses]}")
    if any(not 0.0 <= x <= 1.0 for row in losses for x in row):
        raise ValueError("losses must lie in [0, 1]")
    risks = [math.fsum(row) / n for row in losses]
    p_values = [hb_p_value(r, n, epsilon, binary) for r in risks]
    return LTTResult(risks, p_values, fixed_sequence(p_values, delta))
