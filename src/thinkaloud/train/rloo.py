"""Stage 2 maths (docs/method.md §3): rewards, leave-one-out advantages, KL estimate and the policy loss.

Pure tensor functions, no model: the RL loop in ``thinkaloud.train.rl`` feeds them. Shapes: ``P``
prompts, ``K`` completions per prompt, ``B = P·K`` completions (rows grouped prompt-major: rows
``p·K … p·K+K-1`` belong to prompt p), ``N`` generated positions per row, ``mask`` (B, N) True on
generated tokens.

A completion's policy is the joint distribution of (exit layer, token) at every step, so its
log-probability is ``Σ_t [log p(y_t | ℓ_t) + log P(ℓ_t)]``.

KL to the reference. The reference (base model, no exits) puts all its mass on "no exit", so the KL
of the *joint* (ℓ, y) policy to it is infinite as soon as the policy can exit. ``kl_estimate`` is the
token part instead: ``log p(y_t | ℓ_t) − log p_ref(y_t)``, averaged over the sampled tokens — an
unbiased estimate (per sampled exit) of how far the text distribution has drifted from the base
model's, which is what the KL penalty is there to hold back. The compute the exits save is charged
separately, by λ.

Depth penalty. The paper charges each completion its *mean* depth ``mean_t ℓ_t / L``; a mean can be
lowered by padding the completion with shallow tokens (filler such as "…." exits early and dilutes
it). ``depth_penalty`` also offers two shapes that padding cannot lower: ``sum`` (the completion's
total compute, in full forward passes) and ``max`` (its deepest token).
"""

from __future__ import annotations

import torch

DEPTH_PENALTIES = ("mean", "sum", "max")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x, mask (B, N) → (B,) mean over the masked positions of each row (0 for an empty row)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def depth_fraction(exit_layers: torch.Tensor, mask: torch.Tensor, num_layers: int) -> torch.Tensor:
    """(B, N) exit layers (L for no exit) → (B,) mean ℓ_t / L over each completion's tokens."""
    return masked_mean(exit_layers.float() / num_layers, mask)


def depth_penalty(exit_layers: torch.Tensor, mask: torch.Tensor, num_layers: int, shape: str) -> torch.Tensor:
    """(B, N) exit layers (L for no exit) → (B,) the depth each completion is charged (0 for an empty row).

    ``mean``: mean_t ℓ_t / L (the paper); ``sum``: Σ_t ℓ_t / L, its compute in full forward passes;
    ``max``: max_t ℓ_t / L, its deepest token. Positions outside ``mask`` count for nothing.
    """
    frac = exit_layers.float() / num_layers  # (B, N)
    if shape == "mean":
        return masked_mean(frac, mask)
    if shape == "sum":
        return (frac * mask.to(frac.dtype)).sum(-1)
    if shape == "max":
        return frac.masked_fill(~mask, 0.0).amax(-1)  # fractions are >= 0: a masked 0 never wins
    raise ValueError(f"depth penalty shape must be one of {DEPTH_PENALTIES}, got {shape!r}")


def kl_estimate(token_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, N) log p(y_t | ℓ_t) and log p_ref(y_t) of the sampled tokens → (B,) mean of their difference."""
    return masked_mean(token_logprobs - ref_logprobs, mask)


def completion_rewards(
    task_reward: torch.Tensor, depth: torch.Tensor, kl: torch.Tensor, lam: float, beta: float
) -> torch.Tensor:
    """R = task_reward − λ · depth − β · KL̂ (depth: the charged ``depth_penalty``); every argument (B,) → (B,)."""
    return task_reward - lam * depth - beta * kl


def rloo_advantages(rewards: torch.Tensor, normalize: bool = False, eps: float = 1e-8) -> torch.Tensor:
    """(P, K) rewards → (P, K) leave-one-out advantages A_i = R_i − mean_{j≠i} R_j.

    Each group sums to zero. ``normalize`` divides by the standard deviation of all P·K advantages
    (no re-centring is needed: their mean is already zero), which keeps the zero sums.
    """
    P, K = rewards.shape
    if K < 2:
        raise ValueError(f"leave-one-out needs at least 2 completions per prompt, got K={K}")
    baseline = (rewards.sum(-1, keepdim=True) - rewards) / (K - 1)  # (P, K)
    advantages = rewards - baseline  # (P, K)
    if normalize:
        advantages = advantages / (advantages.std() + eps)
    return advantages


def policy_loss(
    token_logprobs: torch.Tensor, exit_logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    """REINFORCE with the leave-one-out baseline: −mean_i A_i · Σ_t [log p(y_t|ℓ_t) + log P(ℓ_t)] / T_i.

    token_logprobs, exit_logprobs, mask: (B, N); advantages: (B,) (no gradient flows into them).
    ``T_i`` is completion i's number of tokens; padding contributes nothing.
    """
    logp = masked_mean(token_logprobs + exit_logprobs, mask)  # (B,) per-token mean log-prob of completion i
    return -(advantages.detach() * logp).mean()
