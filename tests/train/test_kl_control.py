"""The KL budget's controller (Ziegler et al. 2019): direction, clip, horizon, fixed β without a target."""

from __future__ import annotations

import pytest

from thinkaloud.train.kl_control import CLIP, KLController, next_beta, proportional_error


def test_beta_rises_when_kl_is_above_target_and_falls_below():
    assert next_beta(0.1, kl=1.1, target=1.0, n=4, horizon=4) == pytest.approx(0.1 * 1.1)
    assert next_beta(0.1, kl=0.9, target=1.0, n=4, horizon=4) == pytest.approx(0.1 * 0.9)
    assert next_beta(0.1, kl=1.0, target=1.0, n=4, horizon=4) == pytest.approx(0.1)


@pytest.mark.parametrize("kl", [5.0, 1e6, -3.0, 0.0])
def test_error_is_clipped_so_beta_moves_at_most_a_factor_per_step(kl):
    e = proportional_error(kl, 0.5)
    assert -CLIP <= e <= CLIP and abs(e) == pytest.approx(CLIP)
    beta = next_beta(0.2, kl=kl, target=0.5, n=8, horizon=16)  # n/H = 0.5: at most ±10%
    assert beta == pytest.approx(0.2 * (1 + 0.5 * (CLIP if kl > 0.5 else -CLIP)))


def test_horizon_scales_the_step_and_must_keep_beta_positive():
    slow = next_beta(1.0, kl=2.0, target=1.0, n=4, horizon=10_000)  # TRL's default horizon
    assert 1.0 < slow < 1.0001
    assert next_beta(1.0, kl=0.0, target=1.0, n=9, horizon=2) == pytest.approx(1 - 0.2 * 4.5)
    with pytest.raises(ValueError, match="below 5"):
        next_beta(1.0, kl=0.0, target=1.0, n=10, horizon=2)
    with pytest.raises(ValueError, match="target"):
        proportional_error(1.0, 0.0)


def test_controller_tracks_the_target_and_a_fixed_beta_stays():
    c = KLController(beta=0.1, target=1.0)  # horizon: each step's own n
    betas = [c.update(kl, n=4) for kl in (3.0, 3.0, 0.2, 1.0)]
    assert betas == pytest.approx([0.12, 0.144, 0.1152, 0.1152])
    fixed = KLController(beta=0.25)
    assert [fixed.update(kl, n=4) for kl in (3.0, 0.0)] == [0.25, 0.25]
