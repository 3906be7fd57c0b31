"""Saving and loading the parts of an :class:`~thinkaloud.model.early_exit.EarlyExitModel`, and loading its base
model.

A saved model is a folder: the LoRA adapter (peft, ``adapter/``), the exit heads (safetensors), its
``thinkaloud.json`` (base model, unembedding hash, exit layers, exit config, and the offset recorded by
``thinkaloud risk`` while it matches the weights: ``thinkaloud.model.recorded``) and a model card
``README.md`` (``thinkaloud.model.card``). :func:`save_model` and :func:`load_parts` are the bodies of the
model's ``save_pretrained`` and ``from_pretrained``; :func:`load_base` loads the base model they (and
``from_base``) wrap. This module works on the parts (adapter, heads, config), so it never needs the model class.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from thinkaloud.config import ExitConfig
from thinkaloud.io import atomic_folder, atomic_save_safetensors, atomic_write_json
from thinkaloud.model import arch
from thinkaloud.model.card import write_card
from thinkaloud.model.exit_run import ExitHeads
from thinkaloud.model.recorded import (
    ADAPTER_DIR,
    HEADS_FILE,
    META_FILE,
    RISK_KEY,
    read_meta,
    recorded_offset,
    weights_fingerprint,
)
from thinkaloud.version import __version__

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


def save_model(
    directory: str | os.PathLike,
    peft_model: PeftModel,
    heads: ExitHeads,
    config: ExitConfig,
    source: str,
    risk_control: dict | None = None,
    adapter_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write an early-exit model's parts to ``directory`` (replaced atomically); the body of
    :meth:`EarlyExitModel.save_pretrained`. ``risk_control`` is kept while it matches the weights.
    ``adapter_state``: the LoRA weights by the peft model's parameter names, to write instead of the
    model's own (whose tensors are shards under FSDP, ``thinkaloud.train.dist.fsdp``)."""
    directory = Path(directory)
    base = arch.base_causal_lm(peft_model)
    with atomic_folder(directory) as tmp:
        peft_model.save_pretrained(str(tmp / ADAPTER_DIR), state_dict=adapter_state)
        atomic_save_safetensors(tmp / HEADS_FILE, {"weight": heads.weight, "bias": heads.bias})
        meta = {
            "thinkaloud_version": __version__,
            "base_model": source,
            "model_type": base.config.model_type,
            "unembedding_hash": arch.unembedding_hash(base),
            "num_layers": base.config.num_hidden_layers,
            "hidden_size": base.config.hidden_size,
            "exit_layers": list(heads.layers),
            "exit_config": config.to_dict(),
        }
        fingerprint = weights_fingerprint(tmp)
        for record in (risk_control, read_meta(directory).get(RISK_KEY)):
            if isinstance(record, dict) and record.get("weights") == fingerprint:  # same weights: still valid
                meta[RISK_KEY] = record
                break
        atomic_write_json(tmp / META_FILE, meta)
        write_card(tmp, meta, home=directory)  # README.md: the model card (thinkaloud.model.card)
    return directory


def load_parts(
    directory: str | os.PathLike,
    base: nn.Module | str | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    is_trainable: bool = True,
) -> tuple[PeftModel, ExitHeads, ExitConfig, str, dict | None]:
    """(adapter-wrapped base, heads, exit config, base model name, recorded offset) of a folder written by
    :func:`save_model`; the body of :meth:`EarlyExitModel.from_pretrained`."""
    from peft import PeftModel
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory} holds no {META_FILE}: not a thinkaloud checkpoint")
    meta = json.loads(meta_path.read_text())
    base_model, source = load_base(base if base is not None else meta["base_model"], dtype=dtype, device=device)
    arch.check_supported(base_model.config)
    found = arch.unembedding_hash(base_model)
    if found != meta["unembedding_hash"] or base_model.config.num_hidden_layers != meta["num_layers"]:
        raise ValueError(
            f"{directory} was trained on base model {meta['base_model']!r} (unembedding hash "
            f"{meta['unembedding_hash']}, {meta['num_layers']} layers); the given base {source!r} has hash "
            f"{found} and {base_model.config.num_hidden_layers} layers. Load it onto the model it was trained on."
        )
    config = ExitConfig(**meta["exit_config"])
    peft_model = PeftModel.from_pretrained(base_model, str(directory / ADAPTER_DIR), is_trainable=is_trainable)
    heads = ExitHeads(base_model.config.hidden_size, meta["exit_layers"], config.head_init_bias)
    heads.load_state_dict(load_file(str(directory / HEADS_FILE)))
    heads.to(base_model.device)
    return peft_model, heads, config, meta["base_model"], recorded_offset(directory)


def load_base(
    model_or_path: nn.Module | str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, str]:
    """A loaded model is used as is (a multimodal Gemma 3 through its text model); a string is an alias, a
    local path or a hub id."""
    from transformers import PreTrainedModel

    if isinstance(model_or_path, nn.Module):
        if not isinstance(model_or_path, PreTrainedModel):
            raise TypeError(
                f"expected a loaded transformers model (a PreTrainedModel), a path or an alias; got a "
                f"{type(model_or_path).__name__}"
            )
        source = getattr(model_or_path.config, "_name_or_path", "") or model_or_path.config.model_type
        if device is not None:  # in place; transformers' @wraps(nn.Module.to) is typed as unbound (self first)
            model_or_path.to(device)  # type: ignore[arg-type]
        return arch.text_causal_lm(model_or_path), source
    from thinkaloud.hub import load_causal_lm

    model, source = load_causal_lm(str(model_or_path), dtype=dtype, device=device)
    return arch.text_causal_lm(model), source  # a multimodal Gemma 3 → its text model
