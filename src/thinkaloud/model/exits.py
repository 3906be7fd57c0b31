"""The maths of exits, as pure tensor functions (docs/method.md §1 and §2.3).

m exit layers e_1 < … < e_m and the catch-all "no exit" (layer L) give m+1 outcomes. With per-layer
exit probabilities q_i, stick-breaking gives

    P(exit at e_i) = q_i · ∏_{j<i} (1 − q_j),      P(no exit) = ∏_j (1 − q_j).

Everything is computed from log q and log(1 − q) so that q → 0 or 1 (offset = ±inf, D = 0) gives the
limits without NaNs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def stick_breaking(log_q: torch.Tensor, log_not_q: torch.Tensor) -> torch.Tensor:
    """log q, log(1−q) (..., m) → log P over exit layers and "no exit" (..., m+1)."""
    zeros = torch.zeros_like(log_q[..., :1])  # (..., 1)
    survive = torch.cat([zeros, torch.cumsum(log_not_q, dim=-1)], dim=-1)  # (..., m+1): log ∏_{j<i}(1−q_j)
    # exit at e_i: log q_i + survive_i; no exit: survive_m. Where survive = -inf the sum stays -inf.
    exit_part = log_q + survive[..., :-1]  # (..., m)
    return torch.cat([exit_part, survive[..., -1:]], dim=-1)  # (..., m+1)


def exit_log_distribution(logits: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    """Exit-head logits z (..., m) and the inference offset → log P(exit layer) (..., m+1)."""
    z = logits.float() + offset  # (..., m); offset=-inf → -inf, +inf → +inf
    return stick_breaking(F.logsigmoid(z), F.logsigmoid(-z))


def exit_targets(kl: torch.Tensor, kl_factor: float) -> torch.Tensor:
    """Per-layer KL to the final layer D (..., m) → log target distribution (..., m+1).

    q*_ℓ = 2σ(−F·D_ℓ); in log space log q* = log 2 + log σ(−F·D) and, since 1 − 2σ(−x) = tanh(x/2),
    log(1 − q*) = log(1 − e^{−x}) − log(1 + e^{−x}) with x = F·D ≥ 0. Returns log-probabilities
    (exponentiate for the distribution); they sum to 1.

    F must be > 0: F = 0 makes q* = 1 everywhere (every token exits at the first exit layer whatever
    its KL) and F < 0 gives q* > 1, not a probability.
    """
    if not kl_factor > 0:  # also rejects NaN
        raise ValueError(f"kl_factor must be > 0 (F = 0 exits every token at the first exit layer), got {kl_factor}")
    x = kl.float().clamp_min(0.0) * kl_factor  # (..., m); tiny negative KLs from rounding count as 0
    log_q = math.log(2.0) + F.logsigmoid(-x)  # (..., m), = 0 at x = 0
    log_q = log_q.clamp_max(0.0)
    log_not_q = torch.log(-torch.expm1(-x)) - torch.log1p(torch.exp(-x))  # (..., m), = -inf at x = 0
    return stick_breaking(log_q, log_not_q)


def exit_index(exit_layers: torch.Tensor, layers: list[int], num_layers: int) -> torch.Tensor:
    """Exit layer numbers (any shape) → index into the m+1 outcomes (m = "no exit" = layer L)."""
    table = torch.full((num_layers + 1,), -1, dtype=torch.long, device=exit_layers.device)
    table[torch.tensor(layers, device=exit_layers.device)] = torch.arange(len(layers), device=exit_layers.device)
    table[num_layers] = len(layers)
    idx = table[exit_layers.long().clamp(0, num_layers)]
    if (idx < 0).any() or (exit_layers > num_layers).any():
        bad = sorted(set(exit_layers[(idx < 0) | (exit_layers > num_layers)].tolist()))
        raise ValueError(f"exit layers {bad} are not exit layers {layers} or the last layer {num_layers}")
    return idx
