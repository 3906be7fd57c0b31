"""Tasks: the problems that calibration, RL and eval prompt a model with, and their scorers.

A task draws `Item`s (question + reference answer), renders an item as a prompt for a chat or
base model, and scores a completion in [0, 1]. `get_task(spec)` builds one from a spec string:

- `gsm8k` / `gsm8k:<path>`: grade-school math from the official JSONL (`question`, `answer`
  ending in `#### n`). Score 1 iff the final number equals the reference.
- `rg:<name>`: any reasoning-gym dataset, scored by the dataset's own `score_answer` (which
  may give partial credit). `rg:chain_sum` defaults to easy sums (2-3 terms of 1-2 digits).
- `tom`: our theory-of-mind stories (`thinkaloud.data.tom`). Score 1 iff the answer names the
  right container.

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
by content. A single GSM8K file is a pool: `split` selects its rows whose question hashes to that
split. A directory with `<split>.jsonl` files (and the hub's train / test) are used as given: that
is the user's split. reasoning-gym and tom generate candidates deterministically (split and seed
select separate candidate streams) and keep those in the requested split, skipping repeated
questions, until `n` are collected. The same (n, seed, split) always gives the same items, and
`items(k)` is a prefix of `items(n)` for k < n.
"""

from __future__ import annotations

import json
import os
import random
import socket
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinkaloud.data import tom
from thinkaloud.data.answers import (  # noqa: F401
    clean_answer,
    extract_final_answer,
    extract_number,
    find_final_answer,
    find_number,
    normalize_number,
    parse_number,
)
from thinkaloud.data.splits import (  # noqa: F401
    SPLITS,
    candidate_limit,
    check_split,
    collect_split,
    question_key,
    split_of,
    split_of_key,
)

DEFAULT_TASK = "rg:chain_sum"
KNOWN_TASKS = ["gsm8k", "gsm8k:<path.jsonl>", "rg:<reasoning-gym dataset name>", "tom"]
GSM8K_ENV = "THINKALOUD_GSM8K"

GSM8K_SYSTEM_PROMPT = (
    "Solve the math problem step by step. "
    "On the last line, write the final numeric answer as '#### <number>' (the number only)."
)
RG_SYSTEM_PROMPT = "Solve the problem step by step. End your response with a final line of the form 'Answer: <answer>'."
TOM_SYSTEM_PROMPT = (
    "Read the story and answer the question about where an object is. Think step by step "
    "about who saw what. End your response with 'Answer: <container>'."
)

# Settings that make `get_task("rg:<name>")` easier than reasoning-gym's defaults; rg_kwargs override them.
RG_DEFAULT_KWARGS: dict[str, dict[str, Any]] = {
    "chain_sum": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
}


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


class Task(ABC):
    """A source of items with a prompt format and a scorer."""

    name: str
    system_prompt: str | None  # None or "" means no system prompt
    lenient: bool = False  # fall back to the last number / line when no answer marker yields an answer
    answer_cue: str = "Answer:"  # appended after truncated reasoning to make the model answer at once

    @abstractmethod
    def items(self, n: int, seed: int = 0, split: str = "train") -> list[Item]:
        """`n` items, the same for the same (n, seed, split); raises ValueError if fewer exist."""

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


# ---------------------------------------------------------------- gsm8k


def read_gsm8k_jsonl(path: str | Path) -> list[dict]:
    """Rows `{"question", "answer", "solution"}` of an official GSM8K JSONL file.

    `answer` is the normalised number after "####"; `solution` the full reference text.
    Raises ValueError naming the file and 1-based line of a malformed line.
    """
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected GSM8K JSONL") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("question", "answer")):
            raise ValueError(f"{where}: expected an object with 'question' and 'answer' keys (strings)")
        if "####" not in record["answer"]:
            raise ValueError(f"{where}: answer has no '#### <number>' final line")
        final = record["answer"].rsplit("####", 1)[1].strip()
        if not final:
            raise ValueError(f"{where}: nothing after '####' in the answer")
        if parse_number(final) != normalize_number(final):
            raise ValueError(f"{where}: the answer after '####' is not a number: {final!r}")
        rows.append({"question": record["question"], "answer": normalize_number(final), "solution": record["answer"]})
    return rows


def _hub_gsm8k(split: str) -> list[dict] | None:
    """GSM8K from the Hugging Face hub via `datasets`, or None when not installed or offline."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return None
    try:
        import datasets
    except ImportError:
        return None
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        rows = datasets.load_dataset("openai/gsm8k", "main", split=split)
    except Exception:  # offline, no such split, hub error: the caller reports what to do
        return None
    return [
        {
            "question": r["question"],
            "answer": normalize_number(r["answer"].rsplit("####", 1)[1]),
            "solution": r["answer"],
        }
        for r in rows
    ]


class Gsm8kTask(Task):
    """GSM8K from a local JSONL file or directory, else $THINKALOUD_GSM8K, else the hub (if online).

    A single file is split by question hash; a directory's `<split>.jsonl` and the hub's splits are
    used as they are (module docstring).
    """

    answer_cue = "The answer is"

    def __init__(
        self, path: str | Path | None = None, system_prompt: str | None = GSM8K_SYSTEM_PROMPT, lenient: bool = False
    ):
        self.name = "gsm8k"
        self.system_prompt = system_prompt
        self.lenient = lenient
        self.path = Path(path) if path else None
        self._files: dict[Path, list[dict]] = {}
        self._rows: dict[str, tuple[str, list[tuple[int, dict]]]] = {}  # split -> (source, [(row index, row)])

    def _read(self, file: Path) -> list[dict]:
        if file not in self._files:
            self._files[file] = read_gsm8k_jsonl(file)
        return self._files[file]

    def _from_path(self, path: Path, split: str) -> tuple[str, list[tuple[int, dict]]]:
        if path.is_dir():
            file = path / f"{split}.jsonl"
            if not file.is_file():
                raise FileNotFoundError(f"GSM8K directory {path} has no {split}.jsonl")
            return str(file), list(enumerate(self._read(file)))
        if not path.is_file():
            raise FileNotFoundError(f"GSM8K file {path} does not exist")
        rows, seen = [], set()
        for i, row in enumerate(self._read(path)):
            key = question_key(row["question"])
            if key not in seen and split_of_key(key) == split:
                seen.add(key)
                rows.append((i, row))
        return f"the {split} part of {path} (split by question hash)", rows

    def _load(self, split: str) -> tuple[str, list[tuple[int, dict]]]:
        if split not in self._rows:
            path = self.path or (Path(os.environ[GSM8K_ENV]) if os.environ.get(GSM8K_ENV) else None)
            if path is not None:
                self._rows[split] = self._from_path(path, split)
            elif (rows := _hub_gsm8k(split)) is not None:
                self._rows[split] = ("hf:openai/gsm8k", list(enumerate(rows)))
            else:
                raise FileNotFoundError(
                    f"No GSM8K data for split {split!r}: pass a JSONL file (split into train/validation/test "
                    "by question hash) or a directory with <split>.jsonl files, e.g. "
                    "`--task gsm8k:/path/to/train.jsonl` (get_task('gsm8k', path=...)), or set "
                    f"{GSM8K_ENV}=/path/to/train.jsonl; downloading from the Hugging Face hub needs the "
                    "`datasets` package and network access."
                )
        return self._rows[split]

    def items(self, n: int, seed: int = 0, split: str = "train") -> list[Item]:
        check_split(split)
        source, rows = self._load(split)
        if not 0 < n <= len(rows):
            raise ValueError(f"asked for {n} GSM8K items but {source} has {len(rows)}")
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        picked = [rows[j] for j in order[:n]]
        return [
            Item(
                id=f"gsm8k/{split}/{i}",
                question=row["question"],
                answer=row["answer"],
                meta={"source": source, "index": i, "solution": row["solution"]},
            )
            for i, row in picked
        ]

    def locate_answer(self, completion: str) -> tuple[int, str] | None:
        return find_number(completion, lenient=self.lenient)

    def score(self, item: Item, completion: str) -> float:
        return float(self.extract_answer(completion) == normalize_number(item.answer))


# ---------------------------------------------------------------- reasoning-gym

RG_SEED_STRIDE = 100_000  # candidates per (seed, split); seeds are spaced this far apart
RG_MAX_SEED = 10_000
RG_SPLIT_OFFSET = {"train": 0, "validation": 1_000_000_000, "test": 2_000_000_000}


def rg_seed(seed: int, split: str) -> int:
    """The reasoning-gym seed for our (seed, split).

    reasoning-gym draws item i of a dataset with seed s from `Random(s + i)`, so seeds s and s+1
    share all but one item. Spacing seeds by `RG_SEED_STRIDE` and splits by 1e9 keeps the candidate
    streams of every (seed, split) apart for up to RG_SEED_STRIDE candidates, and stays below 2**32
    for numpy seeding. Split membership itself comes from the question hash (`items`).
    """
    check_split(split)
    if not 0 <= seed < RG_MAX_SEED:
        raise ValueError(f"reasoning-gym task seeds must be in [0, {RG_MAX_SEED}), got {seed}")
    return RG_SPLIT_OFFSET[split] + seed * RG_SEED_STRIDE


class ReasoningGymTask(Task):
    """One reasoning-gym dataset; `rg_kwargs` are fields of its config (e.g. ChainSumConfig)."""

    def __init__(
        self,
        dataset: str,
        rg_kwargs: Mapping[str, Any] | None = None,
        system_prompt: str | None = RG_SYSTEM_PROMPT,
        lenient: bool = False,
    ):
        from reasoning_gym.factory import DATASETS

        if dataset not in DATASETS:
            import difflib

            close = difflib.get_close_matches(dataset, DATASETS, n=5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"unknown reasoning-gym dataset {dataset!r}.{hint} "
                f"Available ({len(DATASETS)}): {', '.join(sorted(DATASETS))}"
            )
        fields = {f.name for f in DATASETS[dataset][1].__dataclass_fields__.values()} - {"seed", "size"}
        kwargs = {**RG_DEFAULT_KWARGS.get(dataset, {}), **(rg_kwargs or {})}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise ValueError(
                f"unknown settings {unknown} for reasoning-gym dataset {dataset!r} "
                f"(seed and size are set by items()); valid: {sorted(fields)}"
            )
        self.name = f"rg:{dataset}"
        self.dataset = dataset
        self.rg_kwargs = kwargs
        self.system_prompt = system_prompt
        self.lenient = lenient
        self._scorer = self._create(size=1, seed=0)  # validates the settings now

    def _create(self, size: int, seed: int):
        import reasoning_gym

        try:
            return reasoning_gym.create_dataset(self.dataset, size=size, seed=seed, **self.rg_kwargs)
        except (AssertionError, ValueError, TypeError) as e:
            raise ValueError(
                f"invalid settings {self.rg_kwargs} for reasoning-gym dataset {self.dataset!r}: {e}"
            ) from e

    def items(self, n: int, seed: int = 0, split: str = "train") -> list[Item]:
        """Candidates i = 0, 1, ... of the (seed, split) stream whose question is in `split` (module docstring)."""
        if not 0 < n <= RG_SEED_STRIDE:
            raise ValueError(f"n must be in [1, {RG_SEED_STRIDE}] for reasoning-gym tasks, got {n}")
        base = rg_seed(seed, split)
        data = self._create(size=RG_SEED_STRIDE, seed=base)  # entries are generated on access

        def candidate(i: int) -> tuple[dict, str]:
            entry = data[i]
            return entry, entry["question"]

        items = []
        for i, entry, key in collect_split(n, split, candidate, min(RG_SEED_STRIDE, candidate_limit(n)), self.name):
            answer = entry.get("answer")
            items.append(
                Item(
                    id=f"{self.name}/{split}/seed{seed}/{i}",
                    question=entry["question"],
                    answer="" if answer is None else str(answer),
                    key=key,
                    meta={
                        "dataset": self.dataset,
                        "entry": entry,
                        "rg_seed": base,
                        "rg_index": i,
                        "rg_kwargs": dict(self.rg_kwargs),
                    },
                )
            )
        return items

    def locate_answer(self, completion: str) -> tuple[int, str] | None:
        return find_final_answer(completion, lenient=self.lenient)

    def score(self, item: Item, completion: str) -> float:
        if item.meta.get("dataset") != self.dataset:
            raise ValueError(f"item {item.id} does not come from {self.name}")
        answer = self.extract_answer(completion)
        if answer is None:
            return 0.0
        variants = [answer] + ([answer[:-1]] if answer.endswith(".") and len(answer) > 1 else [])
        return max(self._score_one(a, item.meta["entry"]) for a in variants)

    def _score_one(self, answer: str, entry: dict) -> float:
        try:
            reward = float(self._scorer.score_answer(answer=answer, entry=entry))
        except Exception:  # a dataset scorer choking on free-form model output: a wrong answer
            return 0.0
        return min(max(reward, 0.0), 1.0)


# ---------------------------------------------------------------- theory of mind


class TomTask(Task):
    """Generated theory-of-mind stories (`thinkaloud.data.tom`); the answer is a container name."""

    def __init__(
        self, config: tom.TomConfig | None = None, system_prompt: str | None = TOM_SYSTEM_PROMPT, lenient: bool = False
    ):
        self.name = "tom"
        self.config = config or tom.TomConfig()
        self.system_prompt = system_prompt
        self.lenient = lenient

    def items(self, n: int, seed: int = 0, split: str = "train") -> list[Item]:
        """Candidate stories i = 0, 1, ... of the (seed, split) stream whose question is in `split`."""
        check_split(split)
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")

        def candidate(i: int) -> tuple[tom.TomStory, str]:
            # a string seed is hashed with sha512 by `random`: stable across runs and platforms
            story = tom.generate_story(self.config, random.Random(f"tom/{split}/{seed}/{i}"))
            return story, story.text()

        return [
            Item(
                id=f"tom/{split}/seed{seed}/{i}",
                question=story.text(),
                answer=story.answer,
                meta=story.to_meta(),
                key=key,
            )
            for i, story, key in collect_split(n, split, candidate, candidate_limit(n), "tom")
        ]

    def locate_answer(self, completion: str) -> tuple[int, str] | None:
        found = find_final_answer(completion, lenient=self.lenient)
        if found is None:
            return None
        answer = tom.normalize_container(found[1])
        return (found[0], answer) if answer else None

    def score(self, item: Item, completion: str) -> float:
        answer = self.extract_answer(completion)
        if answer is None:
            return 0.0
        return float(tom.container_matches(answer, item.answer, item.meta["containers"]))


# ---------------------------------------------------------------- factory


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
    path: GSM8K JSONL file or directory (same as `gsm8k:<path>`).
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
    raise ValueError(f"unknown task {spec!r}; expected one of {KNOWN_TASKS}")
