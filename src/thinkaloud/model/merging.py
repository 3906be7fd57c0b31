"""Generation without the LoRA wrapper's cost: the adapter merged into the base weights for a block.

peft's LoRA layer computes ``W x + B A x`` on every call: two extra matmuls per targeted projection,
about 20% of a base forward on a CPU even when B = 0 (a base model's fresh adapter). Generating with
``W + B A`` merged into the weights gives the same function at the cost of one matmul. Within
:func:`merged_adapter` the adapter is merged (peft's ``merge_adapter``); on exit it is unmerged and the
base weights are restored bit for bit from a copy (unmerging by subtraction would leave round-off in
them, and the base with the adapter off — the fluency teacher, the calibration target — must stay the
base). The exit heads are separate and unaffected.

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
    saved = [(layer, _weight(layer).detach().clone()) for layer in layers]
    peft_model.merge_adapter()  # type: ignore[operator]  # PeftModel.merge_adapter; nn.Module's __getattr__ is untyped
    try:
        yield len(layers)
    finally:
        peft_model.unmerge_adapter()  # type: ignore[operator]  # as above
        with torch.no_grad():
            for layer, weight in saved:
                _weight(layer).copy_(weight)


def _weight(layer: nn.Module) -> torch.Tensor:
    """The weight of a LoRA layer's base layer (the tensor merging changes)."""
    weight = layer.get_base_layer().weight  # type: ignore[operator]  # peft's LoraLayer method
    assert isinstance(weight, torch.Tensor)
    return weight
