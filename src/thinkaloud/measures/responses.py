"""What the externalisation measures read: generated responses with their prompts and exits.

A :class:`Response` is one row of an eval generation: the prompt's token ids, the generated ids (the
stop token included, as ``GenerationOutput.lengths`` counts them) and, per generated token, the exit
layer of the position that predicted it. ``from_generation`` cuts a ``GenerationOutput`` into these;
``teacher_batch`` packs responses again, left-padded by the one padding rule of every stage
(``thinkaloud.data.prompts.left_pad``), with the recorded exits at the positions that made them, so a
teacher-forced pass with prescribed exits sees each response exactly as it was generated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from thinkaloud.data.prompts import left_pad
from thinkaloud.data.task import Item
from thinkaloud.model.generation_output import GenerationOutput

T = TypeVar("T")


@dataclass(frozen=True)
class Response:
    prompt_ids: list[int]
    """The prompt's token ids (no padding)."""
    response_ids: list[int]
    """The generated token ids, the stop token included."""
    exit_layers: list[int] | None = None
    """Per generated token, the exit layer of the position that predicted it (L = no exit); None = no exits."""
    item: Item | None = None
    """The task item it answers (needed only to score answers)."""

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("a response needs a non-empty prompt")
        if self.exit_layers is not None and len(self.exit_layers) != len(self.response_ids):
            raise ValueError(f"{len(self.exit_layers)} exit layers for {len(self.response_ids)} response tokens")


def from_generation(gen: GenerationOutput, items: Sequence[Item] | None = None) -> list[Response]:
    """One :class:`Response` per row of ``gen`` (rows in order; ``items`` aligned with them if given)."""
    if items is not None and len(items) != gen.sequences.shape[0]:
        raise ValueError(f"{len(items)} items for {gen.sequences.shape[0]} generated rows")
    P = gen.prompt_length
    out = []
    for b in range(gen.sequences.shape[0]):
        n = int(gen.lengths[b])
        prompt = gen.sequences[b, :P][gen.attention_mask[b, :P].bool()].tolist()
        out.append(
            Response(
                prompt,
                gen.new_tokens[b, :n].tolist(),
                gen.exit_layers[b, :n].tolist(),
                None if items is None else items[b],
            )
        )
    return out


@dataclass
class TeacherBatch:
    ids: torch.Tensor
    """(B, T) prompt + response ids, left-padded: every row's last response token is at column T-1."""
    mask: torch.Tensor
    """(B, T) 1 for real tokens."""
    exits: torch.Tensor
    """(B, T) the recorded exit at each position that predicted a response token, L elsewhere."""
    lengths: torch.Tensor
    """(B,) response tokens per row; row b's response starts at column T - lengths[b]."""

    def start(self) -> torch.Tensor:
        """(B,) column of each row's first response token (its last prompt token is one before)."""
        return self.ids.shape[1] - self.lengths


def teacher_batch(
    responses: Sequence[Response], pad: int, num_layers: int, device: torch.device | str = "cpu"
) -> TeacherBatch:
    """Responses → a left-padded batch for a teacher-forced pass (see :class:`TeacherBatch`)."""
    ids, mask = left_pad([r.prompt_ids + r.response_ids for r in responses], pad, device)  # (B, T) each
    B, T = ids.shape
    lengths = torch.tensor([len(r.response_ids) for r in responses], dtype=torch.long, device=ids.device)
    exits = torch.full((B, T), num_layers, dtype=torch.long, device=ids.device)
    for b, r in enumerate(responses):
        n = len(r.response_ids)
        if r.exit_layers is not None and n:
            exits[b, T - n - 1 : T - 1] = torch.tensor(r.exit_layers, dtype=torch.long)  # predicting positions
    return TeacherBatch(ids, mask, exits, lengths)


def chunked(seq: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` items."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for s in range(0, len(seq), size):
        yield seq[s : s + size]
