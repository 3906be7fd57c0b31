"""A KL budget for Stage 2: β adapted every step so that the measured KL̂ to the base model tracks a target.

A fixed β (``RLConfig.beta``) has no meaning of its own: how much drift from the base model it allows
depends on the model, the task, λ and the step of training. A budget does: ``RLConfig.kl_target = T``
asks for a KL̂ of about T nats per generated token (the reward's KL̂, ``thinkaloud.train.rloo.kl_estimate``:
the token part of the divergence to the base model, adapter off and no exits). The controller is the
adaptive one of Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences" (§2.2), in
the form TRL's ``AdaptiveKLController`` gives it: after a step whose mean KL̂ over its n completions was
KL̂,

    e = clip(KL̂ / T − 1, −0.2, 0.2)          β ← β · (1 + e · n / H)

a proportional controller on log β with its error clipped, so that one noisy step moves β by at most
a factor 1 ± 0.2 · n / H. ``H`` (``RLConfig.kl_horizon``) is the horizon in completions: Ziegler et
al.'s gain ``K_β`` is n / H per update. TRL's default H = 10,000 suits runs of many thousands of
episodes; a run of tens of steps needs a horizon of the order of one step's completions (the RL
default: H = n, so β moves by up to ±20% a step; the demo uses a shorter one, see
``thinkaloud.experiments.demo``). The multiplier must stay positive, so n / H < 5 (1 / 0.2).

The β that a step's rewards use is the one before its own update (the controller sees KL̂ only after
the rewards are formed); the RL log records that β and the step's KL̂ (``beta``, ``kl``). A positive
error raises β (the text drifts more than the budget allows: the KL penalty weighs more), a negative
one lowers it. β never reaches 0 or changes sign, since each factor lies in [1 − 0.2·n/H, 1 + 0.2·n/H].
"""

from __future__ import annotations

from dataclasses import dataclass

CLIP = 0.2
"""Bound on the proportional error e (Ziegler et al. 2019; TRL)."""


def proportional_error(kl: float, target: float) -> float:
    """e = clip(KL̂ / T − 1, −CLIP, CLIP)."""
    if target <= 0:
        raise ValueError(f"the KL target must be > 0, got {target}")
    return min(CLIP, max(-CLIP, kl / target - 1.0))


def next_beta(beta: float, kl: float, target: float, n: int, horizon: float) -> float:
    """β after a step of ``n`` completions whose mean KL̂ was ``kl``: β · (1 + e · n / horizon)."""
    if horizon <= 0 or n < 1:
        raise ValueError(f"need a horizon > 0 and n >= 1 completions, got horizon={horizon}, n={n}")
    if n / horizon >= 1.0 / CLIP:
        raise ValueError(
            f"n / horizon = {n}/{horizon:g} must stay below {1 / CLIP:g}, or β could reach 0 in one step; "
            "choose a longer horizon"
        )
    return beta * (1.0 + proportional_error(kl, target) * n / horizon)


@dataclass
class KLController:
    """β and its update; ``target`` None: a fixed β (``update`` leaves it as it is)."""

    beta: float
    target: float | None = None
    horizon: float | None = None  # completions; None: one step's completions (the n of the first update)

    def update(self, kl: float, n: int) -> float:
        """Adapt β to the step's mean KL̂ over its ``n`` completions; returns the new β."""
        if self.target is not None:
            self.beta = next_beta(self.beta, kl, self.target, n, self.horizon or n)
        return self.beta
