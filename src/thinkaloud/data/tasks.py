"""Tasks: the problems that calibration, RL and eval prompt a model with, and their scorers.

A task draws `Item`s (question + reference answer), renders an item as a prompt for a chat or
base model, and scores a completion in [0, 1]. `get_task(spec)` builds one from a spec string:

- `gsm8k` / `gsm8k:<path>` / `gsm8k:<file>:split`: grade-school math from the official JSONL
  (`question`, `answer` ending in `#### n`). Score 1 iff the final number equals the reference.
- `rg:<name>`: any reasoning-gym dataset, scored by the dataset's own `score_answer` (which
  may give partial credit). `rg:chain_sum` defaults to easy sums (2-3 terms of 1-2 digits).
- `tom`: our theory-of-mind stories (`thinkaloud.data.tom`). Score 1 iff the answer names the
  right container.
- `organism` / `organism:<hop counts>`: variable-binding chains answered directly, by written hops or
  after filler (`thinkaloud.data.organism`), for a model trained from scratch. Score 1 iff the digit
  after the last `=` is the chain's.

Answers (`thinkaloud.data.answers` has the exact rules). Strict by default: only an explicit
final-answer marker counts (a `#### <number>` line for gsm8k, `\\boxed{}`, "The answer is" /
"Answer:", `<answer>` tags); a completion without one has no answer and scores 0. This is a
departure from our earlier scorer, which fell back to any number in the text: the paper rewards an
exact final answer, and a truncated "... 12 = 17 and then" is not one. `lenient=True` (on every
task and `get_task`) restores that fallback: the last number (gsm8k) or the last non-empty line
(rg, tom). The default system prompts ask for exactly the marker the strict extractor reads.
A plain-text prompt (tokenizer without a chat template) ends with "Answer:", which is not part of
the completion: a base model that answers at once, with no marker of its own, needs `lenient`.

`Task.answer_cue` is the text appended after a (truncated) reasoning to make the model answer at
once ("The answer is" for gsm8k, "Answer:" for rg and tom); the strict extractor reads the answer
that follows it. `Task.split_answer(completion)` gives (reasoning, answer): the text before the
final answer's statement, and the answer.

Splits (`thinkaloud.data.splits`): disjoint by construction. An item's split is fixed by a hash of
its question (80% train / 10% validation / 10% test); `Item.key` is that hash, for leakage checks
by content. A GSM8K file the user names is used as named: whole, whichever split is asked for
(`gsm8k:/data/test.jsonl` evaluates on every row of it); calibrating and evaluating on the same file
is refused by the leakage check, by content. `gsm8k:<file>:split` asks for a hash split of one file:
`split` selects its rows whose question hashes to that split. A directory with `<split>.jsonl` files
(and the hub's train / test) are used as given: that is the user's split. reasoning-gym and tom generate candidates deterministically (split and seed
select separate candidate streams) and keep those in the requested split, skipping repeated
questions, until `n` are collected. The same (n, seed, split) always gives the same items, and
`items(k)` is a prefix of `items(n)` for k < n.

Where they live: `Item`, `Task` and `render_prompt` in `thinkaloud.data.task`; the tasks in
`thinkaloud.data.gsm8k`, `thinkaloud.data.rg` and `thinkaloud.data.tom_task`; this module builds them
(`get_task`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from thinkaloud.data import tom
from thinkaloud.data.gsm8k import Gsm8kTask
from thinkaloud.data.organism import OrganismConfig, OrganismTask
from thinkaloud.data.rg import ReasoningGymTask
from thinkaloud.data.task import Item, Task
from thinkaloud.data.tom_task import TomTask
from thinkaloud.errors import DataError, as_user_errors

DEFAULT_TASK = "rg:chain_sum"
KNOWN_TASKS = [
    "gsm8k",
    "gsm8k:<file.jsonl or directory>",
    "gsm8k:<file.jsonl>:split",
    "rg:<reasoning-gym dataset name>",
    "tom",
    "organism",
    "organism:<hop counts, e.g. 2,3>",
]


def get_task(
    spec: str,
    *,
    system_prompt: str | None = None,
    path: str | None = None,
    rg_kwargs: Mapping[str, Any] | None = None,
    tom_config: tom.TomConfig | None = None,
    lenient: bool = False,
) -> Task:
    """Build a task from a spec in KNOWN_TASKS.

    system_prompt: None keeps the task's default; "" means no system prompt.
    path: GSM8K JSONL file or directory (same as `gsm8k:<path>`; `<file>:split` splits a file by question hash).
    rg_kwargs: reasoning-gym config fields for `rg:<name>`, on top of RG_DEFAULT_KWARGS.
    tom_config: generator settings for `tom`.
    lenient: accept answers without a final-answer marker (the last number / line); see the module docstring.
    """
    spec = spec.strip()
    kind, _, arg = spec.partition(":")
    extra = {"path": path, "rg_kwargs": rg_kwargs, "tom_config": tom_config}
    allowed = {"gsm8k": "path", "rg": "rg_kwargs", "tom": "tom_config"}.get(kind)
    misplaced = [k for k, v in extra.items() if v is not None and k != allowed]
    if allowed and misplaced:
        raise ValueError(f"{misplaced} do not apply to task {spec!r}")
    kw: dict[str, Any] = {"lenient": bool(lenient)}
    if system_prompt is not None:
        kw["system_prompt"] = system_prompt

    if kind == "gsm8k":
        if arg and path and Path(arg) != Path(path):
            raise ValueError(f"task {spec!r} names a file and path={path!r} another; give one")
        return Gsm8kTask(path=arg or path, **kw)
    if kind == "rg" and arg:
        return ReasoningGymTask(arg, rg_kwargs=rg_kwargs, **kw)
    if kind == "tom" and not arg:
        return TomTask(config=tom_config, **kw)
    if kind == "organism":
        if any(v is not None for v in extra.values()) or system_prompt:
            raise ValueError(f"task {spec!r} takes no path, rg_kwargs, tom_config or system prompt")
        return OrganismTask(OrganismConfig(ks=_hop_counts(arg)) if arg else None)
    raise ValueError(f"unknown task {spec!r}; expected one of {KNOWN_TASKS}")


def _hop_counts(arg: str) -> tuple[int, ...]:
    try:
        return tuple(int(k) for k in arg.split(","))
    except ValueError:
        raise ValueError(
            f"organism:<hop counts> takes comma-separated integers, e.g. organism:2,3; got {arg!r}"
        ) from None


def load_items(spec: str, n: int, *, seed: int = 0, split: str = "train", **task_kw: Any) -> tuple[Task, list[Item]]:
    """``get_task(spec, **task_kw)`` and its ``n`` items of ``split``: how a job reads its task, once.

    A bad spec, a malformed data file or too few items raise a ``DataError`` (a user error: the command
    prints it as one line); a missing file raises FileNotFoundError, as ``Task.items`` does.
    """
    with as_user_errors(ValueError, error=DataError):
        task = get_task(spec, **task_kw)
        return task, task.items(n, seed=seed, split=split)
