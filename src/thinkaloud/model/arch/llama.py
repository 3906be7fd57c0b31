"""Llama, Mistral, Qwen2 and Qwen3: pre-norm blocks, separate K/V projections, one rotary embedding.

Qwen2 (and Llama with ``attention_bias``) add biases to the projections, which ``k_proj``/``v_proj``
apply themselves. Qwen3 normalises each key head (``k_norm``) before the rotary embedding. Mistral
windows every layer; Qwen2/Qwen3 window the layers that ``layer_types`` marks.
"""

from thinkaloud.model.arch.family import (
    Family,
    kv_after_input_norm,
    kv_with_head_key_norm,
    no_windows,
    window_on_every_layer,
    windows_by_layer_type,
)

FAMILIES = [
    Family("llama", kv=kv_after_input_norm, sliding_windows=no_windows),
    Family("qwen2", kv=kv_after_input_norm, sliding_windows=windows_by_layer_type),
    Family("qwen3", kv=kv_with_head_key_norm, sliding_windows=windows_by_layer_type),
    Family("mistral", kv=kv_after_input_norm, sliding_windows=window_on_every_layer),
]
