"""Stage-1 losses as pure tensor functions (docs/method.md §2.4). Shapes: N selected completion tokens,
V vocabulary, m exit layers (m+1 outcomes with "no exit")."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distill_kl(teacher_logp: torch.Tensor, student_logits: torch.Tensor, direction: str = "forward") -> torch.Tensor:
    """Per-token KL between teacher and student next-token distributions.

    teacher_logp (N, V) log-probabilities; student_logits (N, V) → (N,).
    forward: KL(teacher ‖ student) (ours, mode-covering); reverse: KL(student ‖ teacher) (the prototype's).
    """
    student_logp = F.log_softmax(student_logits.float(), dim=-1)  # (N, V)
    if direction == "forward":
        return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    if direction == "reverse":
        return (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)
    raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")


def sample_exit_index(
    log_targets: torch.Tensor, samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """log target distribution (N, m+1) → sampled outcome indices (samples, N)."""
    probs = log_targets.exp()  # (N, m+1)
    return torch.multinomial(probs, samples, replacement=True, generator=generator).T  # (samples, N)


def exit_cross_entropy(student_exit_logp: torch.Tensor) -> torch.Tensor:
    """−log P_student(exit at the sampled layer), (N,) → (N,)."""
    return -student_exit_logp


def expected_exit_loss(
    log_targets: torch.Tensor, student_exit_logp: torch.Tensor, per_outcome_distill: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact expectation over exit layers instead of samples.

    log_targets (N, m+1); student_exit_logp (N, m+1); per_outcome_distill (N, m+1) the distillation
    KL when exiting at each outcome → (distill (N,), exit CE (N,)) =
    (Σ_ℓ t_ℓ · KL_ℓ, −Σ_ℓ t_ℓ · log P_student(ℓ)), with 0·(−inf) treated as 0.
    """
    t = log_targets.exp()  # (N, m+1)
    distill = (t * per_outcome_distill).sum(-1)
    ce = -(t * torch.where(t > 0, student_exit_logp, torch.zeros_like(student_exit_logp))).sum(-1)
    return distill, ce


def hazard_bias_init(mean_target: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Head biases whose stick-breaking reproduces a mean target distribution.

    mean_target (m+1,) → biases (m,): b_k = logit(P(k) / P(survive to k)).
    """
    survive = 1.0 - torch.cat([torch.zeros(1), mean_target[:-1].cumsum(0)])  # (m+1,) P(reach outcome k)
    hazard = (mean_target[:-1] / survive[:-1].clamp_min(eps)).clamp(eps, 1 - eps)  # (m,)
    return torch.log(hazard) - torch.log1p(-hazard)
