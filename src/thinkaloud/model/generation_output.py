"""What ``thinkaloud.model.generate.generate`` returns: the sequences with, per new token, its exit
layer and log-probabilities, and the time the prompt and the decoding took."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GenerationOutput:
    sequences: torch.Tensor
    """(B, P+N) left-padded prompts followed by new tokens; pad after a row finished."""
    attention_mask: torch.Tensor
    """(B, P+N) 1 for real tokens."""
    prompt_length: int
    """P, the padded prompt length."""
    exit_layers: torch.Tensor
    """(B, N) exit layer of the position that predicted each new token (L = no exit, L for padding)."""
    token_logprobs: torch.Tensor
    """(B, N) log p(token | its exit) under the model distribution (0 for padding)."""
    exit_logprobs: torch.Tensor
    """(B, N) log P(that exit layer) under stick-breaking (0 for padding)."""
    lengths: torch.Tensor
    """(B,) number of new tokens per row, the stop token included."""
    num_layers: int
    prefill_seconds: float = 0.0
    """Wall time from the start to the first new token of every row (the prompt's forward pass)."""
    decode_seconds: float = 0.0
    """Wall time after the first new token until the last (the remaining N-1 decode steps)."""

    @property
    def decode_tokens(self) -> int:
        """Tokens produced during ``decode_seconds``: every row's new tokens after its first."""
        return int((self.lengths - 1).clamp(min=0).sum())

    @property
    def new_tokens(self) -> torch.Tensor:
        """(B, N) generated tokens."""
        return self.sequences[:, self.prompt_length :]

    @property
    def completion_mask(self) -> torch.Tensor:
        """(B, N) True for generated tokens."""
        n = torch.arange(self.exit_layers.shape[1], device=self.lengths.device)
        return n[None, :] < self.lengths[:, None]

    def full_exit_layers(self) -> torch.Tensor:
        """(B, P+N) exits aligned with ``sequences`` for teacher forcing: position P-1+n holds the
        exit that produced new token n; every other position has no exit (L)."""
        B, N = self.exit_layers.shape
        full = torch.full_like(self.sequences, self.num_layers)
        full[:, self.prompt_length - 1 : self.prompt_length - 1 + N] = self.exit_layers
        return full

    def predicting_positions(self) -> slice:
        """Positions of ``sequences`` whose logits predicted the new tokens."""
        return slice(self.prompt_length - 1, self.prompt_length - 1 + self.exit_layers.shape[1])
