"""The one place that knows Hugging Face model internals: one short file per decoder family.

Everything else in thinkaloud reaches the decoder through these functions, so supporting a new family
means one file here (a :class:`~thinkaloud.model.arch.family.Family`) plus a tiny config in the tests.
We wrap the HF model and call its own modules; we never copy or patch its forward.

Supported: Llama, Mistral, Qwen2, Qwen3 (``llama.py``), Phi-3 (``phi3.py``), Gemma 2 (``gemma2.py``),
Gemma 3 text models, also those inside multimodal Gemma 3 checkpoints (``gemma3.py``), OLMo 2/3
(``olmo.py``), Qwen3-MoE (``qwen3_moe.py``), SmolLM3 (``smollm3.py``), gpt-oss (``gpt_oss.py``).

The interface:
- module accessors ``decoder_layers`` / ``final_norm`` / ``unembed`` / ``embed`` / ``rotary``;
- ``readout``: the model's own readout of a final-normed state (unembedding, then any logit
  soft-capping) — the teacher-forced forward, generation, every exit and the logit lens use it;
- ``position_embeddings``: each layer's rotary (cos, sin), per layer type where the family has
  several bases;
- ``frozen_kv``: the K/V that a layer writes for a token whose residual stream is frozen below it,
  exactly what the layer's own attention computes for K/V, without queries, attention or the MLP;
- ``sliding_windows``: per-layer sliding window (None = full attention) for masks we build ourselves;
- ``lora_target_modules``: generic LoRA target names mapped onto the family's (fused) modules.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from thinkaloud.errors import UserError
from thinkaloud.model.arch import gemma2, gemma3, gpt_oss, llama, olmo, phi3, qwen3_moe, smollm3
from thinkaloud.model.arch.family import Family, HFModule

if TYPE_CHECKING:
    from transformers import PreTrainedModel

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for module in (llama, phi3, gemma2, gemma3, olmo, qwen3_moe, smollm3, gpt_oss)
    for f in module.FAMILIES
}
SUPPORTED_FAMILIES = tuple(FAMILIES)
MULTIMODAL = {"gemma3": "gemma3_text"}
"""Multimodal checkpoints used through their text model: model_type → the text model's model_type."""


class UnsupportedModelError(UserError, ValueError):
    """A model whose family thinkaloud does not know (the message lists the supported ones)."""


def check_supported(config) -> str:
    """The family's model_type (a multimodal Gemma 3 → ``gemma3_text``), or ``UnsupportedModelError``."""
    model_type, text_config = getattr(config, "model_type", None), None
    if model_type in MULTIMODAL:  # used through its text model
        text_config = getattr(config, "text_config", None)
        text_type = getattr(text_config, "model_type", MULTIMODAL[model_type])  # a bare model_type: assumed
        model_type = text_type if text_type == MULTIMODAL[model_type] else f"{model_type} (text model {text_type})"
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported families: {', '.join(SUPPORTED_FAMILIES)} "
            f"(and {', '.join(MULTIMODAL)} through its text model; decoder-only causal LMs; CONTRIBUTING.md says "
            "how to add a family)"
        )
    if getattr(config if text_config is None else text_config, "use_bidirectional_attention", False):
        raise UnsupportedModelError(
            f"this {model_type} model uses bidirectional attention (an encoder, not a "
            "causal LM); thinkaloud needs a causal decoder"
        )
    return model_type


def text_causal_lm(model: PreTrainedModel) -> PreTrainedModel:
    """A loaded model as the causal LM thinkaloud wraps: a multimodal Gemma 3 → its text model (the same
    modules), anything else unchanged."""
    if getattr(model.config, "model_type", None) in MULTIMODAL and hasattr(model.model, "language_model"):
        return gemma3.text_causal_lm(model)
    return model


def family_of(config) -> Family:
    return FAMILIES[check_supported(config)]


def base_causal_lm(model: nn.Module) -> PreTrainedModel:
    """The ``*ForCausalLM`` module, also when wrapped by peft."""
    from peft import PeftModel
    from transformers import PreTrainedModel

    if isinstance(model, PeftModel):
        model = model.get_base_model()
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"expected a transformers causal LM (a PreTrainedModel), got {type(model).__name__}")
    return model


M = TypeVar("M", bound=nn.Module)


def _child(parent: nn.Module, name: str, kind: type[M]) -> M:
    """``parent.<name>``, checked to be a ``kind`` (``nn.Module`` types the attributes it does not declare
    as ``Tensor | Module``)."""
    child = getattr(parent, name)
    if not isinstance(child, kind):
        raise TypeError(f"{type(parent).__name__}.{name} is a {type(child).__name__}, not a {kind.__name__}")
    return child


def decoder(model: nn.Module) -> PreTrainedModel:
    """The inner decoder (``LlamaModel`` etc.): embeddings, layers, final norm, rotary."""
    return base_causal_lm(model).model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return _child(decoder(model), "layers", nn.ModuleList)


def final_norm(model: nn.Module) -> nn.Module:
    return _child(decoder(model), "norm", nn.Module)


def unembed(model: nn.Module) -> nn.Linear:
    """The unembedding matrix (``lm_head``). Read logits out with :func:`readout`, which applies all of the
    model's readout."""
    return _child(base_causal_lm(model), "lm_head", nn.Linear)


def embed(model: nn.Module) -> nn.Embedding:
    """The token embedding; Gemma's module scales by √C itself, as in the HF forward."""
    return _child(decoder(model), "embed_tokens", nn.Embedding)


def rotary(model: nn.Module) -> nn.Module:
    return _child(decoder(model), "rotary_emb", nn.Module)


def num_layers(model: nn.Module) -> int:
    return base_causal_lm(model).config.num_hidden_layers


def readout(model: nn.Module, normed: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
    """Final-normed states (..., C) → next-token logits (..., V), as the model's ``*ForCausalLM`` computes
    them: unembedding, then tanh soft-capping z ← c·tanh(z/c) where the family has it (Gemma 2/3).

    ``vocab``: token ids (K,) → only their logits (..., K), from those rows of the unembedding."""
    base = base_causal_lm(model)
    head = base.lm_head
    if vocab is None:
        logits = head(normed)
    elif type(head) is nn.Linear:
        logits = F.linear(normed, head.weight[vocab], None if head.bias is None else head.bias[vocab])
    else:  # a wrapped head (an adapter on it): all logits, then the requested ones
        logits = head(normed)[..., vocab]
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap is not None and family_of(base.config).final_logit_softcapping:
        logits = logits / cap
        logits = torch.tanh(logits)
        logits = logits * cap
    return logits


def position_embeddings(
    model: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per decoder layer, the rotary (cos, sin) for ``position_ids`` (b, t): each (b, t, D_rot).

    One rotary call per distinct layer type (Gemma 3 and OLMo 3 have a base per type), shared by the
    layers of that type.
    """
    config = base_causal_lm(model).config
    rope, n = rotary(model), config.num_hidden_layers
    if not family_of(config).rope_by_layer_type:
        return [rope(hidden, position_ids)] * n
    types = config.layer_types[:n]
    by_type = {t: rope(hidden, position_ids, t) for t in dict.fromkeys(types)}
    return [by_type[t] for t in types]


def sliding_windows(config) -> list[int | None]:
    """Per decoder layer: the sliding-window size, or None for full causal attention."""
    return family_of(config).sliding_windows(config)


def lora_target_modules(config, names) -> list[str]:
    """LoRA target names (``q_proj``, ``k_proj`` … as in ``ExitConfig``) → this family's module names, in
    order without repeats: Phi-3's fused ``qkv_proj`` / ``gate_up_proj`` stand in for their parts."""
    rename = family_of(config).lora_names
    return list(dict.fromkeys(rename.get(name, name) for name in names))


def unembedding_hash(model: nn.Module) -> str:
    """A short fingerprint of the unembedding matrix, recorded with trained heads and adapters."""
    import hashlib

    w = unembed(model).weight.detach().float().cpu()
    h = hashlib.sha256()
    h.update(str(tuple(w.shape)).encode())
    # A strided sample keeps this fast for large vocabularies and is still specific to the weights.
    # (a copy of the sample: numpy would pin the weight's own storage, which FSDP frees and re-allocates)
    h.update(w.flatten()[:: max(1, w.numel() // 1_000_003)].clone().numpy().tobytes())
    h.update(w.sum(dim=1).numpy().tobytes())
    return h.hexdigest()[:16]


def _layer_output(output) -> torch.Tensor:
    """Decoder layers return a tensor (transformers 5) or a tuple whose first item is it (4.x)."""
    return output[0] if isinstance(output, tuple) else output


def call_layer(layer: nn.Module, hidden: torch.Tensor, **kwargs) -> torch.Tensor:
    return _layer_output(layer(hidden, **kwargs))


def cache_keyword(layer: nn.Module) -> str:
    """The keyword under which a decoder layer takes its KV cache: ``cache`` (recent transformers 5) or
    ``past_key_values`` (before; later versions still accept it, with a deprecation warning per call)."""
    return "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"


@dataclass
class _KVSpec:
    num_kv_heads: int
    head_dim: int


def kv_spec(config) -> _KVSpec:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return _KVSpec(num_kv_heads=config.num_key_value_heads, head_dim=head_dim)


def frozen_kv(
    layer: HFModule, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V that ``layer`` writes for tokens whose stream is frozen at ``hidden``.

    hidden (b, t, C); cos/sin (b, t, D_rot) from :func:`position_embeddings` for this layer →
    k, v (b, H_kv, t, D). The family's K/V projections (``Family.kv``), then the layer's own rotary
    on the key where the layer rotates.
    """
    attn = layer.self_attn
    fam = FAMILIES[attn.config.model_type]
    k, v = fam.kv(layer, hidden)  # (b, t, H_kv, D) each
    k, v = k.transpose(1, 2), v.transpose(1, 2)  # (b, H_kv, t, D)
    if fam.uses_rope(layer):
        apply_rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        _, k = apply_rotary(k, k, cos, sin)
    return k, v
