"""OLMo 2 and OLMo 3: norms after each block instead of before, and a norm over the whole key projection.

A layer has no input norm before attention: attention reads the residual stream itself and its output
is normalised (``post_attention_layernorm``) before the residual add; likewise for the MLP. Queries
and keys are RMS-normalised over the whole projection (all heads together, before splitting into
heads), unlike Qwen3/Gemma 3 which normalise each head. OLMo 3 adds sliding-window layers and a
rotary embedding per layer type.
"""

from thinkaloud.model.arch.family import Family, heads, no_windows, windows_by_layer_type


def kv_without_input_norm(layer, hidden):
    """``k_norm(k_proj(h))`` and ``v_proj(h)`` on the stream itself. hidden (b, t, C) → k, v (b, t, H_kv, D)."""
    attn = layer.self_attn
    return heads(attn.k_norm(attn.k_proj(hidden)), attn), heads(attn.v_proj(hidden), attn)


FAMILIES = [
    Family("olmo2", kv=kv_without_input_norm, sliding_windows=no_windows),
    Family("olmo3", kv=kv_without_input_norm, sliding_windows=windows_by_layer_type, rope_by_layer_type=True),
]
