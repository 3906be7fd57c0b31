"""Generation without the LoRA wrapper's cost: the adapter merged into the base weights for a block.

peft's LoRA layer computes ``W x + B A x`` on every call: two extra matmuls per targeted projection,
about 20% of a base forward on a CPU even when B = 0 (a base model's fresh adapter). Generating with
``W + B A`` merged into the weights gives the same function at the cost of one matmul. Within
:func:`merged_adapter` the adapter is merged into copies of the base weights (peft's ``merge_adapter`` with
``safe_merge``); on exit the layers get the base's own tensors back, never written, so the base is restored
bit for bit (unmerging by subtraction would leave round-off in it, and the base with the adapter off — the
fluency teacher, the calibration target — must stay the base). The exit heads are separate and unaffected.

Merged and unmerged logits differ by float round-off only (``(W + BA) x`` against ``W x + B (A x)``),
so a greedy token can change where two tokens tie to the last bit. Use it around generation, never
around a pass that needs the adapter off (``disable_adapter`` would unmerge it inside the block).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def merged_adapter(peft_model: nn.Module) -> Iterator[int]:
    """Merge the active LoRA adapter of ``peft_model`` (a peft model) into its base weights for the block;
    yields the number of LoRA layers merged (0: nothing to merge, or already merged — then nothing changes)."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    if not layers or any(layer.merged for layer in layers):
        yield 0
        return
    originals = [(layer, _weight(layer).data) for layer in layers]
    # merged into copies (peft's safe merge): the base tensors are never written. Loaded from safetensors they
    # are memory-mapped, and a first write costs a page fault per page: 6.5 s for SmolLM2-135M, against 0.07 s.
    peft_model.merge_adapter(safe_merge=True)  # type: ignore[operator]  # PeftModel.merge_adapter; nn.Module's __getattr__ is untyped
    try:
        yield len(layers)
    finally:
        peft_model.unmerge_adapter()  # type: ignore[operator]  # peft's bookkeeping; it subtracts from the copies
        for layer, data in originals:
            _weight(layer).data = data  # the base's own tensors again, bit for bit


def _weight(layer: nn.Module) -> torch.Tensor:
    """The weight of a LoRA layer's base layer (the tensor merging changes)."""
    weight = layer.get_base_layer().weight  # type: ignore[operator]  # peft's LoraLayer method
    assert isinstance(weight, torch.Tensor)
    return weight
