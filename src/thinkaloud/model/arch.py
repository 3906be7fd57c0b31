"""The one place that knows Hugging Face model internals (Llama, Qwen2, Qwen3, Mistral).

Everything else in thinkaloud reaches the decoder through these accessors, so supporting a new family
means adding it here. We wrap the HF model and call its own modules; we never copy its forward.

What we need from a family:
- ``decoder_layers`` / ``final_norm`` / ``unembed`` / ``embed`` / ``rotary``: module accessors;
- ``frozen_kv``: the K/V that a layer writes for a token whose residual stream is frozen below it
  (input norm + K/V projections [+ K norm] + rotary on the key), i.e. exactly what the layer's own
  attention computes for K/V, without running queries, attention or the MLP;
- ``sliding_windows``: per-layer sliding window (None = full attention) for masks we build ourselves.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn

from thinkaloud.errors import UserError

SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


class UnsupportedModelError(UserError, ValueError):
    """A model whose family thinkaloud does not know (the message lists the supported ones)."""


def check_supported(config) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported families: {', '.join(SUPPORTED_FAMILIES)} "
            "(decoder-only causal LMs; CONTRIBUTING.md says how to add a family)"
        )
    return model_type


def base_causal_lm(model: nn.Module) -> nn.Module:
    """The ``*ForCausalLM`` module, also when wrapped by peft."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.get_base_model()
    return model


def decoder(model: nn.Module) -> nn.Module:
    """The inner decoder (``LlamaModel`` etc.): embeddings, layers, final norm, rotary."""
    return base_causal_lm(model).model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return decoder(model).layers


def final_norm(model: nn.Module) -> nn.Module:
    return decoder(model).norm


def unembed(model: nn.Module) -> nn.Module:
    return base_causal_lm(model).lm_head


def embed(model: nn.Module) -> nn.Module:
    return decoder(model).embed_tokens


def rotary(model: nn.Module) -> nn.Module:
    return decoder(model).rotary_emb


def num_layers(model: nn.Module) -> int:
    return base_causal_lm(model).config.num_hidden_layers


def sliding_windows(config) -> list[int | None]:
    """Per decoder layer: the sliding-window size, or None for full causal attention."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    n = config.num_hidden_layers
    if layer_types is not None:
        return [window if t == "sliding_attention" else None for t in layer_types[:n]]
    if config.model_type == "mistral":
        return [window] * n
    if getattr(config, "use_sliding_window", False):
        start = getattr(config, "max_window_layers", 0)
        return [window if i >= start else None for i in range(n)]
    return [None] * n


def unembedding_hash(model: nn.Module) -> str:
    """A short fingerprint of the unembedding matrix, recorded with trained heads and adapters."""
    import hashlib

    w = unembed(model).weight.detach().float().cpu()
    h = hashlib.sha256()
    h.update(str(tuple(w.shape)).encode())
    # A strided sample keeps this fast for large vocabularies and is still specific to the weights.
    h.update(w.flatten()[:: max(1, w.numel() // 1_000_003)].numpy().tobytes())
    h.update(w.sum(dim=1).numpy().tobytes())
    return h.hexdigest()[:16]


def _layer_output(output) -> torch.Tensor:
    """Decoder layers return a tensor (transformers 5) or a tuple whose first item is it (4.x)."""
    return output[0] if isinstance(output, tuple) else output


def call_layer(layer: nn.Module, hidden: torch.Tensor, **kwargs) -> torch.Tensor:
    return _layer_output(layer(hidden, **kwargs))


@dataclass
class _KVSpec:
    num_kv_heads: int
    head_dim: int


def kv_spec(config) -> _KVSpec:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return _KVSpec(num_kv_heads=config.num_key_value_heads, head_dim=head_dim)


def frozen_kv(
    layer: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V that ``layer`` writes for tokens whose stream is frozen at ``hidden``.

    hidden (b, t, C); cos/sin (b, t, D) from the model's rotary embedding → k, v (b, H_kv, t, D).
    Mirrors the K/V half of the family's attention forward (Qwen3 adds a per-head RMSNorm on keys).
    """
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)  # (b, t, C)
    shape = (*x.shape[:-1], -1, attn.head_dim)  # (b, t, H_kv, D)
    k = attn.k_proj(x).view(shape)
    if hasattr(attn, "k_norm"):  # Qwen3
        k = attn.k_norm(k)
    k = k.transpose(1, 2)  # (b, H_kv, t, D)
    v = attn.v_proj(x).view(shape).transpose(1, 2)  # (b, H_kv, t, D)
    apply_rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    _, k = apply_rotary(k, k, cos, sin)
    return k, v
