"""Prompt text → token ids: the one tokenisation path of calibration, SFT, RL and eval.

A rendered prompt is either a chat-template text (which may already spell out the model's BOS token,
as Llama 3's template does) or a plain "Question: …\\nAnswer:" text for a base model (which needs the
BOS token the tokenizer adds to ordinary text). One rule covers both: tokenise without special tokens,
then prepend the tokens the tokenizer puts *before* ordinary text (its BOS, if any) unless the ids
already start with them. Suffix tokens some tokenizers append to ordinary text (an EOS) are never
added: a prompt is continued, not closed.

Every stage calls these functions, so the KL targets of calibration are computed on exactly the ids
that SFT trains on and that RL and eval generate from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def special_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before ordinary text (e.g. ``[bos]``; ``[]`` for Qwen-style tokenizers)."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of one rendered prompt (see the module docstring for the rule)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    prefix = special_prefix(tokenizer)
    if prefix and ids[: len(prefix)] != prefix:
        ids = prefix + ids
    if not ids:
        raise ValueError("the rendered prompt is empty")
    return ids


def left_pad(
    rows: Sequence[Sequence[int]], pad: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids → left-padded (B, P) ids and their (B, P) 0/1 attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            ids[b, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[b, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def encode_prompts(
    tokenizer: Any, texts: Sequence[str], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered prompts → left-padded (B, P) ids and mask, each row as :func:`prompt_ids` gives it."""
    return left_pad([prompt_ids(tokenizer, t) for t in texts], pad_id(tokenizer), device)
