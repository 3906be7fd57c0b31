"""Tiny early-exit models after training has moved them: LoRA B ≠ 0, heads that exit at every layer.

A freshly built model has LoRA B = 0 (the adapter is the identity) and heads that almost never exit,
so a test on it cannot tell "adapter on" from "adapter off" or one exit layer from another. The base
here is peaked (unembedding scaled up: entropy ≈ 2 nats instead of ≈ log V), so that errors in a
readout or a position change the distributions visibly, not in the fifth decimal.
"""

from __future__ import annotations

import torch

from tests.tiny import build_tiny
from thinkaloud import EarlyExitModel, ExitConfig

UNEMBED_SCALE = 40.0  # tiny models start near-uniform (init std 0.02); this makes them confident
HEAD_SCALE = 10.0  # the residual stream at the exit layers has norm ≈ 0.1: exit logits z ≈ N(0, 1)


def peaked_base(family: str = "llama", seed: int = 0):
    """A tiny HF model (fresh, no adapter) with a confident next-token distribution."""
    model = build_tiny(family, seed)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(UNEMBED_SCALE)
    return model


def moved_model(
    family: str = "llama",
    seed: int = 1,
    lora_scale: float = 0.2,
    head_scale: float = HEAD_SCALE,
    head_bias: float = 0.0,
    exit_every: int = 2,
) -> EarlyExitModel:
    """An early-exit model (exits at 2 and 4 of 6 layers) on ``peaked_base`` with a trained-looking
    adapter (random B) and heads; eval mode (LoRA dropout off)."""
    model = EarlyExitModel.from_base(peaked_base(family), ExitConfig(exit_every=exit_every)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * lora_scale)
        model.heads.weight.copy_(torch.randn(model.heads.weight.shape, generator=g) * head_scale)
        model.heads.bias.fill_(head_bias)
    return model
