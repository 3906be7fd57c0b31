"""The logit lens KL: how far each exit layer's readout is from the final layer's (docs/method.md §2.2).

For a position with final-layer distribution p_L and exit-layer readout p_ℓ = softmax(readout(norm(h_ℓ)))
(the model's own final norm and readout: unembedding, then any logit soft-capping),
D_ℓ = KL(p_L ‖ p_ℓ). Computed as
Σ p log p − Σ p z + logsumexp(z), so no (m, n, V) log-softmax is materialised, and in chunks of
positions so that memory does not grow with vocab × layers × length.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


@torch.no_grad()
def lens_kl(
    states: list[torch.Tensor],
    final: torch.Tensor,
    select: torch.Tensor,
    norm: Callable[[torch.Tensor], torch.Tensor],
    readout: Callable[[torch.Tensor], torch.Tensor],
    vocab_size: int,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Residual streams at the m exit layers (each (B, T, C), not normed), the final-normed last hidden
    state (B, T, C) and a (B, T) bool selection → (B, T, m) float32 KL(p_L ‖ p_ℓ), NaN where not selected.
    ``readout`` maps final-normed states (..., C) to logits (..., V) (``thinkaloud.model.arch.readout``).

    ``chunk_size`` positions are read out at a time (default: about 2^24 logits per chunk on CPU,
    2^28 on GPU).
    """
    m = len(states)
    idx = select.flatten().nonzero().squeeze(-1)  # (N,)
    budget = (1 << 28) if final.is_cuda else (1 << 24)  # logits per chunk: ~1 GiB on GPU, 64 MiB on CPU
    chunk = chunk_size or max(1, budget // (vocab_size * (m + 1)))
    flat = lambda h: h.reshape(-1, h.shape[-1])  # (B*T, C)
    states = [flat(h) for h in states]
    last = flat(final)
    out = torch.full((idx.numel(), m), float("nan"), device=final.device)
    for s in range(0, idx.numel(), chunk):
        rows = idx[s : s + chunk]
        logp_final = F.log_softmax(readout(last[rows]).float(), dim=-1)  # (n, V)
        p_final = logp_final.exp()
        neg_entropy = (p_final * logp_final).sum(-1)  # (n,)  Σ p log p
        lens = torch.stack([norm(h[rows]) for h in states])  # (m, n, C): logit lens inputs
        logits = readout(lens).float()  # (m, n, V), one matmul for all exit layers
        cross = torch.einsum("nv,mnv->mn", p_final, logits)  # (m, n)
        out[s : s + chunk] = (neg_entropy[None] - cross + torch.logsumexp(logits, dim=-1)).T
    result = torch.full((*select.shape, m), float("nan"), device=final.device)
    result.view(-1, m)[idx] = out
    return result
