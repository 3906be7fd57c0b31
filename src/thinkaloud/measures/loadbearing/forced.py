"""What the load-bearing measures share: each response's reasoning and answer, the answer cue, and the
answers the model is forced to give after a context (``thinkaloud.measures.reliance``'s machinery).

:func:`split_reasoning` cuts every response into its prompt, the tokens of its reasoning (the text
before the final-answer marker, ``Task.split_answer``; the tokens as in early answering,
``reliance.reasoning_tokens``) and the extracted answer; a response without an answer is ``None``.
:class:`Cues` holds the answer cue's token ids after a reasoning (on a new line) and after a bare prompt
(after a space, or nothing when the prompt already ends with the cue, as early answering does at f = 0).
A forced answer is what the model writes after ``context + cue``: its first non-empty line, read by the
task's extractor as ``cue + " " + line`` (:func:`read_forced`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thinkaloud.data.task import Item, Task
from thinkaloud.measures.reliance import first_line, reasoning_tokens
from thinkaloud.measures.responses import Response


@dataclass(frozen=True)
class Reasoned:
    """A response with an extractable answer, cut into prompt, reasoning and answer."""

    response: Response
    completion: str
    """The decoded response."""
    reasoning: str
    """The decoded reasoning tokens (``response_ids[:n]``): the text the measures edit or replace."""
    n: int
    """Tokens of the response that make up the reasoning."""
    answer: str
    """The response's own final answer (extracted by the task)."""

    @property
    def prompt_ids(self) -> list[int]:
        return self.response.prompt_ids

    @property
    def reasoning_ids(self) -> list[int]:
        return self.response.response_ids[: self.n]

    @property
    def item(self) -> Item | None:
        return self.response.item


def check_task(task: Task) -> str:
    """The task's answer cue; TypeError when it lacks one or ``split_answer``."""
    cue = getattr(task, "answer_cue", None)
    if not cue or not callable(getattr(task, "split_answer", None)):
        raise TypeError(f"task {getattr(task, 'name', task)!r} needs an answer_cue and a split_answer()")
    return cue


def split_reasoning(task: Task, responses: Sequence[Response], tokenizer: Any) -> list[Reasoned | None]:
    """One :class:`Reasoned` per response, ``None`` where the task extracts no answer."""
    out: list[Reasoned | None] = []
    for r in responses:
        completion = tokenizer.decode(r.response_ids, skip_special_tokens=True)
        split = task.split_answer(completion)
        if split is None:
            out.append(None)
            continue
        reasoning, answer = split
        n = reasoning_tokens(tokenizer, r.response_ids, completion, reasoning)
        text = tokenizer.decode(r.response_ids[:n], skip_special_tokens=True)
        out.append(Reasoned(r, completion, text, n, answer))
    return out


class Cues:
    """The answer cue's token ids: ``after_reasoning`` ("\\n" + cue) and :meth:`after_prompt`."""

    def __init__(self, tokenizer: Any, cue: str):
        self.tokenizer, self.cue = tokenizer, cue
        encode = lambda text: tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
        self.after_reasoning = encode("\n" + cue)
        self._bare, self._spaced = encode(cue), encode(" " + cue)

    def after_prompt(self, prompt_ids: Sequence[int]) -> tuple[int, ...]:
        """The cue after a prompt with no reasoning: none when the prompt ends with it already, else after a
        space unless the prompt ends with whitespace."""
        text = self.tokenizer.decode(list(prompt_ids), skip_special_tokens=False)
        if text.rstrip().endswith(self.cue):
            return ()
        return self._bare if text[-1:].isspace() else self._spaced

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def read_forced(task: Task, cue: str, written: str) -> tuple[str, str | None]:
    """(the text the task reads, the answer extracted from it) for what the model wrote after the cue."""
    text = f"{cue} {first_line(written)}"
    return text, task.extract_answer(text)


def score(task: Task, item: Item | None, text: str) -> float | None:
    return None if item is None else float(task.score(item, text))


def mean(values: Sequence[float | bool | None]) -> float | None:
    """Mean of the values that are not None (None when there are none)."""
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
