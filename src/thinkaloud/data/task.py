"""What every task is: `Item` (question + reference answer) and `Task` (items, prompt, answer
extraction, scoring), and the one prompt renderer. The tasks themselves, their answer rules and
splits: `thinkaloud.data.tasks`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from thinkaloud.data.splits import question_key
from thinkaloud.errors import UserError


@dataclass(frozen=True)
class Item:
    id: str  # stable id, e.g. "gsm8k/train/17" or "rg:chain_sum/train/seed0/3"
    question: str  # the user-facing problem text
    answer: str  # reference answer (normalised string)
    meta: dict = field(default_factory=dict)  # free-form: source row, reasoning-gym entry, story structure
    key: str = ""  # content key: hash of the question (`splits.question_key`); filled in when empty

    def __post_init__(self):
        if not self.key:
            object.__setattr__(self, "key", question_key(self.question))


class OverlapError(UserError, ValueError):
    """Two sets of items that must be disjoint (a job's training and held-out items) share questions."""


def check_disjoint(a: Sequence[Item], b: Sequence[Item], what: str) -> None:
    """Refuse ``a`` and ``b`` when they share a question (by content, ``Item.key``); ``what`` names both."""
    shared = {it.key for it in a} & {it.key for it in b}
    if shared:
        raise OverlapError(
            f"{what} share {len(shared)} questions; they must be disjoint. A GSM8K file is used whole for "
            "every split: give a directory with one <split>.jsonl per split, or gsm8k:<file>:split to split "
            "one file by question hash"
        )


class Task(ABC):
    """A source of items with a prompt format and a scorer."""

    name: str
    system_prompt: str | None  # None or "" means no system prompt
    lenient: bool = False  # fall back to the last number / line when no answer marker yields an answer
    answer_cue: str = "Answer:"  # appended after truncated reasoning to make the model answer at once

    @abstractmethod
    def items(self, n: int, seed: int = 0, split: str = "train") -> list[Item]:
        """`n` items, the same for the same (n, seed, split); raises ValueError if fewer exist."""

    def data_source(self, split: str) -> dict[str, Any] | None:
        """Where the items of ``split`` come from, for a task that reads a data file: ``{"file",
        "split_by_hash", "rows_in_file", "rows_used"}`` (the rows ``items`` draws from); None for a task
        that generates its items."""
        return None

    @abstractmethod
    def locate_answer(self, completion: str) -> tuple[int, str] | None:
        """(index in `completion` where the final answer's statement begins, normalised answer), or None."""

    @abstractmethod
    def score(self, item: Item, completion: str) -> float:
        """Reward in [0, 1] for `completion` as an answer to `item`."""

    def extract_answer(self, completion: str) -> str | None:
        """The model's final answer in `completion`, normalised, or None if there is none."""
        found = self.locate_answer(completion)
        return None if found is None else found[1]

    def split_answer(self, completion: str) -> tuple[str, str] | None:
        """(reasoning, answer): the text before the final answer's marker (trailing whitespace
        stripped) and the extracted answer; None when no answer can be extracted."""
        found = self.locate_answer(completion)
        return None if found is None else (completion[: found[0]].rstrip(), found[1])

    def same_answer(self, item: Item | None, a: str | None, b: str | None) -> bool:
        """Whether two extracted answers (to ``item``, if known) are the same answer: equal after
        stripping, case folding and dropping a trailing period. No answer (None) agrees with nothing."""
        norm = lambda s: s.strip().rstrip(".").strip().casefold()
        return a is not None and b is not None and norm(a) == norm(b)

    def prompt(self, item: Item, tokenizer: Any) -> str:
        return render_prompt(item.question, tokenizer, self.system_prompt)


def render_prompt(question: str, tokenizer: Any, system_prompt: str | None = None) -> str:
    """Chat-template text ending with the assistant turn, or "Question: ...\\nAnswer:" without a template.

    Some chat templates (e.g. Gemma's) reject a system role; then the system prompt is prepended
    to the user message instead.
    """
    if not getattr(tokenizer, "chat_template", None):
        head = f"{system_prompt}\n\n" if system_prompt else ""
        return f"{head}Question: {question}\nAnswer:"
    user = {"role": "user", "content": question}
    if not system_prompt:
        return tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    try:
        return tokenizer.apply_chat_template(
            [{"role": "system", "content": system_prompt}, user], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # template without a system role; any other error repeats below
        merged = {"role": "user", "content": f"{system_prompt}\n\n{question}"}
        return tokenizer.apply_chat_template([merged], tokenize=False, add_generation_prompt=True)
