"""Gemma 3 text models (``gemma3_text``), also inside the multimodal ``gemma3`` checkpoints.

As Gemma 2 (scaled embeddings, sandwich norms, ``query_pre_attn_scalar``, local/global layers, logit
soft-capping when the config sets it), plus an RMSNorm over each query and key head, and a rotary
embedding per layer type: local (sliding) layers and global layers have different bases, so the
rotary module is called with the layer type.

A multimodal Gemma 3 (``Gemma3ForConditionalGeneration``) is used through its text model:
:func:`text_causal_lm` wraps its language model and ``lm_head`` (shared, not copied) in a
``Gemma3ForCausalLM``. The multimodal head never soft-caps its logits, so neither does the wrapper
(its config copy has no ``final_logit_softcapping``): for text-only inputs the two compute the same
logits. The vision tower stays loaded but unused.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

from thinkaloud.model.arch.family import Family, kv_with_head_key_norm, windows_by_layer_type

if TYPE_CHECKING:
    from transformers import PreTrainedModel

FAMILIES = [
    Family(
        "gemma3_text",
        kv=kv_with_head_key_norm,
        sliding_windows=windows_by_layer_type,
        rope_by_layer_type=True,
        final_logit_softcapping=True,
    ),
]


def text_causal_lm(model: PreTrainedModel) -> PreTrainedModel:
    """A ``Gemma3ForConditionalGeneration`` → a ``Gemma3ForCausalLM`` on the same modules (no copies)."""
    from transformers import Gemma3ForCausalLM

    language_model = model.model.language_model
    config = copy.deepcopy(language_model.config)
    config.final_logit_softcapping = None  # as the multimodal head reads out
    with torch.device("meta"):  # the shell only: its modules are replaced by the loaded ones
        text = Gemma3ForCausalLM(config)
    text.model, text.lm_head = language_model, model.lm_head
    text.config._name_or_path = getattr(model.config, "_name_or_path", "")
    text.generation_config = model.generation_config
    return text.train(model.training)
