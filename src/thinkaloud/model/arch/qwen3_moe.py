"""Qwen3-MoE: Qwen3 attention (per-head key norm) with a mixture-of-experts MLP.

The MoE block (router + experts) is the layer's ``mlp``; generation calls a layer only for the rows
that have not exited, so an exited token runs no router and no experts above its exit. Some layers
may have a dense MLP (``mlp_only_layers``). A sliding window, when set, applies to every layer.
"""

from thinkaloud.model.arch.family import Family, kv_with_head_key_norm, window_on_every_layer

FAMILIES = [
    Family("qwen3_moe", kv=kv_with_head_key_norm, sliding_windows=window_on_every_layer),
]
