"""Evaluation metrics on exit layers: pure functions, no model needed.

Layer convention: exit layer ℓ ∈ 1..L names the residual stream after ℓ decoder layers; a token that
never exits counts as ℓ = L (``num_layers``). ``E`` is the set of exit layers; histograms are over
``E ∪ {L}``.

Inputs are exit layers per generated token, as a torch tensor of any shape (e.g. ``(B, T)``), a flat
list, or a ragged list of lists (one list per completion). ``mask`` (same structure, truthy = real
token) drops padding. Every metric returns a python ``float`` or ``dict``; an empty selection raises
``ValueError`` rather than returning NaN.

Metrics (docs/method.md §4):
- early-exit rate: share of tokens with ℓ < L;
- ALS (average layer savings): mean of (L − ℓ)/L;
- mean depth fraction: mean of ℓ/L (= 1 − ALS; the RL compute penalty's average);
- exit histogram and the target histogram (mean of the calibration targets), compared by TV distance;
- FLOP savings from an analytic FLOP count per generated token (see ``flop_per_token``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

ExitLayers = torch.Tensor | Sequence[int] | Sequence[Sequence[int]]


def _flat(values: Any, dtype: torch.dtype) -> torch.Tensor:
    """A tensor, a flat list, or a ragged list of lists → 1-D tensor."""
    if isinstance(values, torch.Tensor):
        return values.detach().reshape(-1).to(dtype=dtype, device="cpu")
    values = list(values)
    if values and isinstance(values[0], (list, tuple, torch.Tensor)):
        parts = [_flat(v, dtype) for v in values]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)
    return torch.tensor(values, dtype=dtype).reshape(-1)


def _select(values: Any, mask: Any | None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Flatten `values` and keep the entries where `mask` is truthy. Returns (N,)."""
    flat = _flat(values, dtype)
    if mask is None:
        return flat
    keep = _flat(mask, torch.float64) != 0
    if keep.shape != flat.shape:
        raise ValueError(f"mask has {keep.numel()} entries, values have {flat.numel()}")
    return flat[keep]


def _exit_layers(exit_layers: ExitLayers, num_layers: int, mask: Any | None) -> torch.Tensor:
    """Selected exit layers as float64 (N,), validated to lie in 1..L and non-empty."""
    layers = _select(exit_layers, mask)
    if layers.numel() == 0:
        raise ValueError("no tokens to measure (empty exit layers or all masked)")
    bad = (layers < 1) | (layers > num_layers) | (layers != layers.round())  # (N,)
    if bool(bad.any()):
        examples = sorted(set(layers[bad].tolist()))[:5]
        raise ValueError(f"exit layers must be integers in 1..{num_layers}; got e.g. {examples}")
    return layers


def early_exit_rate(exit_layers: ExitLayers, num_layers: int, mask: Any | None = None) -> float:
    """Share of tokens that exit before the last layer (ℓ < L)."""
    layers = _exit_layers(exit_layers, num_layers, mask)  # (N,)
    return float((layers < num_layers).double().mean())


def average_layer_savings(exit_layers: ExitLayers, num_layers: int, mask: Any | None = None) -> float:
    """ALS = (1/N) Σ_i (L − ℓ_i) / L."""
    layers = _exit_layers(exit_layers, num_layers, mask)  # (N,)
    return float(((num_layers - layers) / num_layers).mean())


def mean_depth_fraction(exit_layers: ExitLayers, num_layers: int, mask: Any | None = None) -> float:
    """(1/N) Σ_i ℓ_i / L = 1 − ALS: the average compute that the RL penalty λ·mean(ℓ/L) charges."""
    layers = _exit_layers(exit_layers, num_layers, mask)  # (N,)
    return float((layers / num_layers).mean())


def exit_histogram(
    exit_layers: ExitLayers, layers: Sequence[int], mask: Any | None = None, *, num_layers: int | None = None
) -> dict[int, float]:
    """Share of tokens per exit layer over the support ``layers`` (= E ∪ {L}).

    Pass ``layers = E`` together with ``num_layers = L`` to have L added. A token whose exit layer is
    not in the support raises ``ValueError``. The shares sum to 1.
    """
    support = sorted(set(int(x) for x in layers) | ({int(num_layers)} if num_layers is not None else set()))
    selected = _exit_layers(exit_layers, max(support), mask)  # (N,)
    counts = {layer: int((selected == layer).sum()) for layer in support}
    n_outside = selected.numel() - sum(counts.values())
    if n_outside:
        outside = sorted({int(x) for x in selected.tolist()} - set(support))
        raise ValueError(f"{n_outside} tokens exit at layers {outside}, outside the support {support}")
    return {layer: c / selected.numel() for layer, c in counts.items()}


def target_histogram(log_targets: torch.Tensor, layers: Sequence[int], mask: Any | None = None) -> dict[int, float]:
    """Mean of the calibration targets over tokens: ``mean_t exp(log_targets[t])`` per layer.

    log_targets: (..., m+1) log-probabilities over ``layers`` = E ∪ {L} (last column: no exit).
    mask: optional (...) over the leading dimensions.
    """
    log_targets = torch.as_tensor(log_targets).detach().to("cpu", torch.float64)
    layers = [int(x) for x in layers]
    if log_targets.shape[-1] != len(layers):
        raise ValueError(f"log_targets has {log_targets.shape[-1]} columns, layers has {len(layers)} entries")
    probs = log_targets.exp().reshape(-1, len(layers))  # (N, m+1)
    if mask is not None:
        keep = _flat(mask, torch.float64) != 0  # (N,)
        if keep.numel() != probs.shape[0]:
            raise ValueError(f"mask has {keep.numel()} entries, log_targets has {probs.shape[0]} rows")
        probs = probs[keep]
    if probs.shape[0] == 0:
        raise ValueError("no tokens to measure (empty log_targets or all masked)")
    mean = probs.mean(dim=0)  # (m+1,)
    return {layer: float(p) for layer, p in zip(layers, mean)}


def tv_distance(p: Mapping[Any, float], q: Mapping[Any, float]) -> float:
    """Total variation ½ Σ_ℓ |p(ℓ) − q(ℓ)| over the union of keys (a missing key has mass 0).

    Keys are normalised with ``int``, so histograms read back from JSON (``"5"``) compare with ``5``. Two
    disjoint histograms whose masses sum to 1 only up to rounding give 1, not 1 + 1e-9.
    """
    p_ = {int(k): float(v) for k, v in p.items()}
    q_ = {int(k): float(v) for k, v in q.items()}
    return min(1.0, 0.5 * sum(abs(p_.get(k, 0.0) - q_.get(k, 0.0)) for k in p_.keys() | q_.keys()))


# ---------------------------------------------------------------------------------------------------
# FLOPs


def model_dims(config: Any) -> dict[str, int]:
    """The keyword arguments of ``flop_per_token`` / ``flop_savings`` read from a HF config.

    A mixture-of-experts MLP counts as the dense MLP of the experts each token runs through:
    ``intermediate`` = ``num_experts_per_tok`` × expert width (``moe_intermediate_size`` for Qwen3-MoE,
    ``intermediate_size`` for gpt-oss, whose config holds no other). Its router (hidden × experts per
    layer) is ignored as small, and so are dense MLP layers among the expert layers (Qwen3-MoE's
    ``mlp_only_layers``, ``decoder_sparse_step`` > 1): every layer counts as an expert layer.

    Usage: ``flop_savings(exit_layers, context=512, **model_dims(model.config))``.
    """
    n_heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return {
        "hidden": int(config.hidden_size),
        "intermediate": _mlp_width(config),
        "n_heads": n_heads,
        "n_kv_heads": int(getattr(config, "num_key_value_heads", None) or n_heads),
        "head_dim": int(head_dim),
        "vocab": int(config.vocab_size),
        "num_layers": int(config.num_hidden_layers),
    }


def _mlp_width(config: Any) -> int:
    """The width of the MLP a token runs through: the dense width, or active experts × expert width."""
    experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)
    top_k = getattr(config, "num_experts_per_tok", None)
    if not (experts and top_k):
        return int(config.intermediate_size)
    expert_width = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
    return int(top_k) * int(expert_width)


def _flop_terms(
    *, hidden: int, intermediate: int, n_heads: int, n_kv_heads: int, head_dim: int, vocab: int
) -> tuple[float, float, float, float]:
    """(per full layer, per full layer per context position, per frozen layer, fixed per token)."""
    norm = 4 * hidden  # RMSNorm: square, mean, rsqrt-scale, weight
    q_o = 2 * 2 * hidden * n_heads * head_dim  # Q and O projections (2 FLOPs per multiply-add)
    kv = 2 * 2 * hidden * n_kv_heads * head_dim  # K and V projections
    mlp = 3 * 2 * hidden * intermediate  # SwiGLU: gate, up, down
    full = 2 * norm + q_o + kv + mlp
    per_ctx = 2 * 2 * n_heads * head_dim  # q·k scores and the weighted sum of values, per position
    frozen = norm + kv  # above the exit: input norm + K/V of the frozen state
    fixed = norm + 2 * hidden * vocab  # final norm + unembedding
    return float(full), float(per_ctx), float(frozen), float(fixed)


def flop_per_token(
    *,
    hidden: int,
    intermediate: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    vocab: int,
    num_layers: int,
    context: float,
    exit_layer: int,
) -> float:
    """Analytic FLOPs to generate one token of a Llama-family decoder that exits at `exit_layer`.

    Counting 2 FLOPs per multiply-add, with a KV cache and `context` positions attended to (the
    prompt and the tokens so far, this one included):
    - a layer at or below the exit (ℓ ≤ exit): two RMSNorms, Q/K/V/O projections, attention over the
      context (scores and weighted values) and the SwiGLU MLP;
    - a layer above the exit: only its input norm and K/V projections of the frozen state (later
      tokens attend to this position), docs/method.md §1;
    - always: final norm and unembedding (hidden × vocab); the embedding lookup counts as 0.

    Ignored as small: softmax, rotary, biases, residual adds, Q/K norms, the exit heads' readouts
    (2·hidden each), and sliding windows (pass the windowed context if the model uses them).
    """
    if not 1 <= exit_layer <= num_layers:
        raise ValueError(f"exit_layer must lie in 1..{num_layers}, got {exit_layer}")
    full, per_ctx, frozen, fixed = _flop_terms(
        hidden=hidden, intermediate=intermediate, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, vocab=vocab
    )
    return exit_layer * (full + per_ctx * context) + (num_layers - exit_layer) * frozen + fixed


def flop_savings(
    exit_layers: ExitLayers,
    *,
    hidden: int,
    intermediate: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    vocab: int,
    num_layers: int,
    context: float | ExitLayers,
    mask: Any | None = None,
) -> float:
    """1 − Σ_t flops(ℓ_t) / Σ_t flops(L): the share of generation FLOPs that the exits saved.

    context: one number for every token, or per-token context lengths with the same structure as
    `exit_layers` (e.g. prompt length + position + 1).
    """
    layers = _exit_layers(exit_layers, num_layers, mask)  # (N,)
    if isinstance(context, (int, float)):
        ctx = torch.full_like(layers, float(context))  # (N,)
    else:
        ctx = _select(context, mask)  # (N,)
        if ctx.shape != layers.shape:
            raise ValueError(f"context has {ctx.numel()} entries, exit layers have {layers.numel()}")
    full, per_ctx, frozen, fixed = _flop_terms(
        hidden=hidden, intermediate=intermediate, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, vocab=vocab
    )
    per_layer = full + per_ctx * ctx  # (N,)
    spent = layers * per_layer + (num_layers - layers) * frozen + fixed  # (N,)
    no_exit = num_layers * per_layer + fixed  # (N,)
    return float(1.0 - spent.sum() / no_exit.sum())
