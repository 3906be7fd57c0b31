"""SmolLM3: Llama blocks where every few layers use no rotary embedding (NoPE, ``no_rope_layers``).

A NoPE layer's keys are written without rotation, so the K/V of a frozen state skip the rotary there.
Sliding windows, when enabled, follow ``layer_types``.
"""

from thinkaloud.model.arch.family import Family, kv_after_input_norm, windows_by_layer_type


def uses_rope(layer) -> bool:
    return bool(layer.self_attn.use_rope)


FAMILIES = [
    Family("smollm3", kv=kv_after_input_norm, sliding_windows=windows_by_layer_type, uses_rope=uses_rope),
]
