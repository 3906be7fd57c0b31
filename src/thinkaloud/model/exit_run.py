"""How a teacher-forced pass of :class:`~thinkaloud.model.early_exit.EarlyExitModel` exits.

- :class:`ExitHeads`: the m scalar exit readouts, one per exit layer;
- ``ExitSpec``: which exits a pass takes (none, prescribed per position, or sampled);
- ``_ExitRun``: the state of one pass, advanced in layer order by the model's decoder-layer hooks —
  it freezes exited positions (docs/method.md §1), reads the exit heads and sums the log-probability
  of the exits taken;
- ``_check_inputs`` / ``_check_exits_from``: the checks of a pass's inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from thinkaloud.model.exits import exit_index


class ExitHeads(nn.Module):
    """m scalar readouts z_i = w_i · h + b_i, computed in fp32 whatever the model's dtype.

    Autocast is switched off inside the head (for the input's device type): under bf16 mixed
    precision autocast would otherwise run the readout's matmul in bf16, and exit logits near the
    sampling threshold would move by bf16 round-off.
    """

    def __init__(self, hidden_size: int, layers: list[int], init_bias: float = -6.0):
        super().__init__()
        self.layers = list(layers)
        self.weight = nn.Parameter(torch.zeros(len(layers), hidden_size))  # (m, C)
        self.bias = nn.Parameter(torch.full((len(layers),), float(init_bias)))  # (m,)

    def forward(self, hidden: torch.Tensor, k: int) -> torch.Tensor:
        """hidden (..., C) at exit layer ``self.layers[k]`` → exit logit z (...), float32."""
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return hidden.float() @ self.weight[k].float() + self.bias[k].float()


ExitSpec = torch.Tensor | Literal["sample"] | None


@dataclass
class ExitForwardOutput:
    logits: torch.Tensor
    """(B, T, V) next-token logits read out at each position's exit."""
    exit_layers: torch.Tensor
    """(B, T) layer actually used (L for no exit)."""
    exit_logprobs: torch.Tensor
    """(B, T) log P(exit at that layer) under stick-breaking (0 where offset = −inf and no exit)."""
    head_logits: torch.Tensor | None = None
    """(m, B, T) each exit head's logit z at its layer, before the offset (when the pass is asked for them)."""


@dataclass
class AllExitsOutput:
    exit_logprobs: torch.Tensor
    """(B, T, m+1) log-distribution over exit layers (context without exits)."""
    states: list[torch.Tensor]
    """m+1 tensors (B, T, C): the final-normed residual stream at each exit layer and at L; the
    logits of exiting at outcome k are ``arch.readout(model.peft, states[k])``."""


class _ExitRun:
    """State of one teacher-forced pass, advanced by the decoder-layer hooks in layer order."""

    def __init__(
        self,
        heads: ExitHeads,
        num_layers: int,
        mask: torch.Tensor,
        spec: ExitSpec,
        offset: float,
        generator: torch.Generator | None,
        capture: bool,
        exits_from: torch.Tensor | None = None,
        uniforms: Sequence[torch.Tensor] | None = None,
        record_heads: bool = False,
    ):
        """``uniforms``: per exit head, the (B, T) uniforms a sampled pass compares with q (instead of drawing
        them from ``generator`` at each exit layer, as it otherwise does, in layer order); ``record_heads``:
        keep every head's logit (``head_logits``)."""
        B, T = mask.shape
        L = num_layers
        self.heads, self.mask, self.offset, self.generator = heads, mask.bool(), float(offset), generator
        self.layer_to_head = {layer: k for k, layer in enumerate(heads.layers)}
        self.can_exit = self.mask  # (B, T): real positions from each row's first exit column on
        if exits_from is not None:
            self.can_exit = self.mask & (torch.arange(T, device=mask.device)[None, :] >= exits_from[:, None])
        self.sample = isinstance(spec, str)
        if isinstance(spec, str) or spec is None:  # sampling starts from "no exit" everywhere
            self.exit_layers = torch.full((B, T), L, dtype=torch.long, device=mask.device)
        else:
            self.exit_layers = spec.to(mask.device).long()
            self.exit_layers = torch.where(self.mask, self.exit_layers, L)  # padding never exits
            exit_index(self.exit_layers, list(heads.layers), L)  # validates the values
            if ((self.exit_layers < L) & ~self.can_exit).any():
                raise ValueError("exit_layers prescribes exits before exits_from, where positions never exit")
        self.frozen = torch.zeros(B, T, dtype=torch.bool, device=mask.device)  # exited below this layer
        self.logp = torch.zeros(B, T, device=mask.device)  # (B, T) log P(exit layer) so far
        self.capture = capture
        self.captured: dict[int, torch.Tensor] = {}  # exit layer → its stream, when capturing
        self.inputs: torch.Tensor | None = None
        self.uniforms = uniforms
        self.head_logits: list[torch.Tensor] | None = [] if record_heads else None  # per head (B, T)

    def before(self, hidden: torch.Tensor) -> None:
        self.inputs = hidden

    def after(self, j: int, out: torch.Tensor) -> torch.Tensor:
        """Output of layer j (1-based) → the residual stream after layer j under freeze."""
        if self.frozen.any():
            assert self.inputs is not None, "the layer's pre-hook sets its input"
            out = torch.where(self.frozen[..., None], self.inputs, out)  # (B, T, C)
        if j in self.layer_to_head:
            k = self.layer_to_head[j]
            if self.capture:
                self.captured[j] = out
            z = self.heads(out, k)  # (B, T)
            if self.head_logits is not None:
                self.head_logits.append(z)
            z = z + self.offset
            live = ~self.frozen & self.can_exit
            if self.sample:
                u = (
                    torch.rand(z.shape, generator=self.generator, device=z.device)
                    if self.uniforms is None
                    else self.uniforms[k]
                )
                exits = live & (u < torch.sigmoid(z.detach()))
                self.exit_layers = torch.where(exits, j, self.exit_layers)
            exiting = self.exit_layers == j
            step = torch.where(exiting, F.logsigmoid(z), F.logsigmoid(-z))
            self.logp = self.logp + torch.where(live, step, torch.zeros_like(step))
        self.frozen = self.exit_layers <= j
        self.inputs = None
        return out


def _check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    return input_ids, attention_mask.to(input_ids.device)


def _check_exits_from(exits_from: int | torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor | None:
    """``exits_from`` of :meth:`EarlyExitModel.forward` → (B,) first exit column of each row, or None."""
    if exits_from is None:
        return None
    (B, T), start = input_ids.shape, torch.as_tensor(exits_from, device=input_ids.device)
    if start.is_floating_point() or start.shape not in ((), (B,)) or (start < 0).any() or (start > T).any():
        raise ValueError(f"exits_from must be an int or a (batch,) integer tensor in 0..{T}, got {exits_from!r}")
    return start.long().expand(B)
