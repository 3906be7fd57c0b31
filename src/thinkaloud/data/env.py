"""RL environments: where the prompts of Stage 2 come from and how a completion is rewarded.

An environment (:class:`Env`) is a deterministic prompt stream plus a scorer. The stream is indexed,
so that every RL run sees the same prompts in the same order and a resumed run continues where it
stopped. :class:`TaskEnv` renders a ``Task``'s items with a tokenizer's chat template (the one
tokenisation path of ``thinkaloud.data.prompts``) and scores decoded completions with the task's
scorer, in [0, 1]. Pass your own ``Env`` to ``thinkaloud.train.rl.train_rl`` for a custom reward
(for instance one on token ids, with no tokenizer).

``format_penalty`` (the prototype's −1 for a malformed answer) is subtracted when the task extracts
no answer from a completion; with strict answer extraction, that is any completion without an
answer marker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from thinkaloud.data.prompts import pad_id, prompt_ids
from thinkaloud.data.task import Item, Task

if TYPE_CHECKING:
    from thinkaloud.model.generation_output import GenerationOutput


@dataclass
class Prompt:
    ids: list[int]
    """Prompt token ids (no padding)."""
    question: str = ""
    """The user-facing problem (for the coherence judge)."""
    item: Any = None
    """Whatever the environment needs to score a completion (a task ``Item``)."""


@dataclass
class Scored:
    reward: torch.Tensor
    """(B,) task reward of each completion."""
    accuracy: torch.Tensor
    """(B,) task score in [0, 1] (the logged accuracy)."""
    texts: list[str] | None = None
    """Decoded completions, if the environment decodes (the judge needs them)."""
    answered: torch.Tensor | None = None
    """(B,) bool: the task found an answer (with strict extraction: an answer marker), if it extracts answers."""


class Env(Protocol):
    """A prompt stream and a scorer."""

    pad_token_id: int
    stop_token_ids: list[int] | None  # None: the model's EOS

    def prompts(self, start: int, n: int) -> list[Prompt]:
        """Prompts ``start … start+n-1`` of the stream (deterministic)."""

    def score(self, prompts: Sequence[Prompt], out: GenerationOutput) -> Scored:
        """Row b of ``out`` is a completion of ``prompts[b]``."""


class TaskEnv:
    """A ``Task``'s items rendered with a tokenizer's chat template, scored by the task's scorer.

    The stream cycles through ``pool`` items of ``split`` drawn with ``seed``.
    """

    def __init__(
        self, task: Task, tokenizer, *, seed: int, pool: int, split: str = "train", format_penalty: float = 0.0
    ):
        self.task, self.tokenizer, self.format_penalty = task, tokenizer, format_penalty
        self.items: list[Item] = task.items(pool, seed=seed, split=split)
        self.pad_token_id = pad_id(tokenizer)
        self.stop_token_ids: list[int] | None = None  # the model's EOS

    def prompts(self, start: int, n: int) -> list[Prompt]:
        items = [self.items[(start + i) % len(self.items)] for i in range(n)]
        return [
            Prompt(prompt_ids(self.tokenizer, self.task.prompt(it, self.tokenizer)), it.question, it) for it in items
        ]

    def score(self, prompts: Sequence[Prompt], out: GenerationOutput) -> Scored:
        texts = [
            self.tokenizer.decode(row[:n], skip_special_tokens=True)
            for row, n in zip(out.new_tokens.tolist(), out.lengths.tolist())
        ]
        acc = torch.tensor([self.task.score(p.item, t) for p, t in zip(prompts, texts)])
        answered = torch.tensor([self.task.extract_answer(t) is not None for t in texts])
        return Scored(
            reward=acc - self.format_penalty * (~answered).float(), accuracy=acc, texts=texts, answered=answered
        )
