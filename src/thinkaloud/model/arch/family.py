"""What thinkaloud needs to know about a decoder family, and the pieces that several families share.

A :class:`Family` names what differs between Hugging Face decoders where exit = freeze and the logit
lens must get it right. Everything else (attention kernels, masks inside the HF forward, sinks,
soft-capped scores, ``query_pre_attn_scalar``, GQA, mixture-of-experts MLPs, embedding scaling) is done
by the family's own HF modules, which thinkaloud calls and never copies.

- ``kv``: the K/V that a layer's attention writes for a residual stream ``hidden`` — everything up to
  (not including) the rotary embedding: input norm (if the family has one before attention), the K/V
  projections, any norm on the projected keys. Shapes (b, t, C) → k, v (b, t, H_kv, D).
- ``uses_rope(layer)``: whether that layer rotates its keys (SmolLM3 has layers without rotary).
- ``rope_by_layer_type``: the rotary module takes the layer type and has one base per type
  (Gemma 3 local/global, OLMo 3).
- ``sliding_windows(config)``: per layer, the sliding-window size or None (full causal attention), for
  the masks generation builds itself.
- ``final_logit_softcapping``: the ``*ForCausalLM`` soft-caps its logits with
  ``config.final_logit_softcapping`` (Gemma 2/3): tanh(z / c) · c after the unembedding.
- ``lora_names``: generic LoRA target names (``q_proj`` …) → this family's module names, for fused
  projections (Phi-3's ``qkv_proj`` and ``gate_up_proj``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

KV = tuple[torch.Tensor, torch.Tensor]
HFModule = Any
"""A decoder layer or attention module of a Hugging Face model, read by the family's attribute names
(``self_attn.k_proj``, ``input_layernorm``, ``head_dim`` …). Any on purpose: the names differ per family,
and ``nn.Module`` types every attribute it does not declare as ``Tensor | Module``."""


def _always(layer: HFModule) -> bool:
    return True


@dataclass(frozen=True)
class Family:
    model_type: str
    kv: Callable[[HFModule, torch.Tensor], KV]
    sliding_windows: Callable[[object], list[int | None]]
    uses_rope: Callable[[HFModule], bool] = _always
    rope_by_layer_type: bool = False
    final_logit_softcapping: bool = False
    lora_names: Mapping[str, str] = field(default_factory=dict)


def heads(x: torch.Tensor, attn: HFModule) -> torch.Tensor:
    """(b, t, H·D) → (b, t, H, D) with the attention module's head size."""
    return x.view(*x.shape[:-1], -1, attn.head_dim)


def kv_after_input_norm(layer: HFModule, hidden: torch.Tensor) -> KV:
    """Llama-style: input RMSNorm, then ``k_proj`` and ``v_proj`` (with their biases, where the family has
    them). hidden (b, t, C) → k, v (b, t, H_kv, D)."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)  # (b, t, C)
    return heads(attn.k_proj(x), attn), heads(attn.v_proj(x), attn)


def kv_with_head_key_norm(layer: HFModule, hidden: torch.Tensor) -> KV:
    """As :func:`kv_after_input_norm`, then an RMSNorm over each key head (Qwen3, Qwen3-MoE, Gemma 3)."""
    k, v = kv_after_input_norm(layer, hidden)
    return layer.self_attn.k_norm(k), v


def no_windows(config) -> list[int | None]:
    return [None] * config.num_hidden_layers


def window_on_every_layer(config) -> list[int | None]:
    """One ``config.sliding_window`` (None: no window) for every layer (Mistral, Phi-3, Qwen3-MoE)."""
    return [getattr(config, "sliding_window", None)] * config.num_hidden_layers


def windows_by_layer_type(config) -> list[int | None]:
    """``config.sliding_window`` on the layers whose ``layer_types`` entry is ``sliding_attention``.

    Configs from before ``layer_types`` (Qwen2/Qwen3 in older transformers) window the layers from
    ``max_window_layers`` on when ``use_sliding_window`` is set.
    """
    n, window = config.num_hidden_layers, getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return [window if t == "sliding_attention" else None for t in layer_types[:n]]
    if getattr(config, "use_sliding_window", False):
        start = getattr(config, "max_window_layers", 0)
        return [window if i >= start else None for i in range(n)]
    return [None] * n
