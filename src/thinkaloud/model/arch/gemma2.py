"""Gemma 2: scaled embeddings, sandwich norms, soft-capped attention scores and logits, local/global layers.

- The embedding module multiplies by √C itself (``Gemma2TextScaledWordEmbedding``), so calling it as
  generation does embeds exactly as the HF forward.
- Attention: scores scaled by ``query_pre_attn_scalar``^-½ and soft-capped with
  ``attn_logit_softcapping`` inside the HF attention module (eager), which generation calls.
- Layers alternate sliding-window and full attention (``layer_types``).
- K/V of a frozen state: input norm, ``k_proj``/``v_proj``, rotary — as Llama.
- Readout: final norm, unembedding, then tanh soft-capping with ``final_logit_softcapping``.
"""

from thinkaloud.model.arch.family import Family, kv_after_input_norm, windows_by_layer_type

FAMILIES = [
    Family("gemma2", kv=kv_after_input_norm, sliding_windows=windows_by_layer_type, final_logit_softcapping=True),
]
