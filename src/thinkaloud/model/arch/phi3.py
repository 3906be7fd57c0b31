"""Phi-3 (and Phi-4, Phi-4-reasoning): fused projections, partial rotary, an optional window on every layer.

Queries, keys and values come from one ``qkv_proj`` (no biases), laid out [q | k | v]; a frozen state
needs only the k and v slices, but the fused matmul (with its LoRA) produces q too. The module's own
``apply_rotary_pos_emb`` rotates only the first ``partial_rotary_factor`` of each head. The MLP is a
fused ``gate_up_proj``. LoRA targets named for separate projections map onto the fused modules.
"""

from thinkaloud.model.arch.family import Family, heads, window_on_every_layer


def kv_from_fused(layer, hidden):
    """Input RMSNorm, then the k and v slices of ``qkv_proj``. hidden (b, t, C) → k, v (b, t, H_kv, D)."""
    attn = layer.self_attn
    qkv = attn.qkv_proj(layer.input_layernorm(hidden))  # (b, t, (H + 2 H_kv) D)
    q = attn.config.num_attention_heads * attn.head_dim
    kv = attn.num_key_value_heads * attn.head_dim
    return heads(qkv[..., q : q + kv], attn), heads(qkv[..., q + kv :], attn)


FAMILIES = [
    Family(
        "phi3",
        kv=kv_from_fused,
        sliding_windows=window_on_every_layer,
        lora_names={
            "q_proj": "qkv_proj",
            "k_proj": "qkv_proj",
            "v_proj": "qkv_proj",
            "gate_proj": "gate_up_proj",
            "up_proj": "gate_up_proj",
        },
    ),
]
