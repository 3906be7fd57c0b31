"""Tasks: the problems that calibration, RL and eval prompt a model with, and their scorers.

A task draws `Item`s (question + reference answer), renders an item as a prompt for a chat or
base model, and scores a completion in [0, 1]. `get_task(spec)` builds one from a spec string:

- `gsm8k` / `gsm8k:<path>`: grade-school math from the official JSONL (`question`, `answer`
  ending in `#### n`). Score 1 iff the final number equals the reference.
- `rg:<name>`: any reasoning-gym dataset, scored by the dataset's own `score_answer` (which
  may give partial credit). `rg:chain_sum` defaults to easy sums (2-3 terms of 1-2 digits).
- `tom`: our theory-of-mind stories (`thinkaloud.data.tom`). Score 1 iff the answer names the
  right container.

Answer extraction (the default system prompts ask for exactly what the scorers look for).
Everything from a line starting with "Question:" on (after some text) is dropped first: that is
a base model starting a new example, not its answer.

- gsm8k, the first rule that yields a number wins: the first number after the last "####";
  else the last number inside the last `\\boxed{...}`; else the first number after the last
  "answer is" / "answer:"; else the last number in the text. Numbers are normalised (commas,
  `$`, trailing zeros after the decimal point, trailing period removed), as is the reference.
- rg and tom: the content of the last `<answer>...</answer>` if any; else whichever marker comes
  last in the text: "Answer:" (the text after it up to the next empty line, so that multi-line
  answers such as grids survive), "answer is" (rest of its line) or `\\boxed{...}`; else the last
  non-empty line. The result is stripped of markdown emphasis, a surrounding `$...$` and
  `\\boxed{}` / `\\text{}` wrappers. A trailing period is optional: rg scores the answer with and
  without it and keeps the better; tom ignores punctuation.

Splits. gsm8k reads `<split>.jsonl` when given a directory; a single file is used for every split
(with a warning when its name is not `<split>.jsonl`). reasoning-gym and tom items are procedural:
the split and seed select disjoint seed ranges (see `ReasoningGymTask`).
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Mapping

from thinkaloud.data import tom

DEFAULT_TASK = "rg:chain_sum"
KNOWN_TASKS = ["gsm8k", "gsm8k:<path.jsonl>", "rg:<reasoning-gym dataset name>", "tom"]
SPLITS = ("train", "validation", "test")
GSM8K_ENV = "THINKALOUD_GSM8K"

GSM8K_SYSTEM_PROMPT = ("Solve the math problem step by step. "
                       "On the last line, write the final numeric answer as '#### <number>'.")
RG_SYSTEM_PROMPT = ("Solve the problem step by step. "
                    "End your response with a final line of the form 'Answer: <answer>'.")
TOM_SYSTEM_PROMPT = ("Read the story and answer the question about where an object is. Think step by step "
                     "about who saw what. End your response with 'Answer: <container>'.")

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


class Task(ABC):
    """A source of items with a prompt format and a scorer."""

    name: str
    system_prompt: str | None  # None or "" means no system prompt

    @abstractmethod
    def items(self, n: int, seed: int = 0, split: str = "train") -> list[Item]:
        """`n` items, the same for the same (n, seed, split); raises ValueError if fewer exist."""

    @abstractmethod
    def extract_answer(self, completion: str) -> str | None:
        """The model's final answer in `completion`, normalised, or None if there is none."""

    @abstractmethod
    def score(self, item: Item, completion: str) -> float:
        """Reward in [0, 1] for `completion` as an answer to `item`."""

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
        return tokenizer.apply_chat_template([{"role": "system", "content": system_prompt}, user],
                                             tokenize=False, add_generation_prompt=True)
    except Exception:  # template without a system role; any other error repeats below
        merged = {"role": "user", "content": f"{system_prompt}\n\n{question}"}
        return tokenizer.apply_chat_template([merged], tokenize=False, add_generation_prompt=True)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


# ---------------------------------------------------------------- answer extraction

_NEW_QUESTION = re.compile(r"^\s*Question:", re.M)
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_ANSWER_COLON = re.compile(r"\banswer\s*:", re.I)
_ANSWER_IS = re.compile(r"\banswer\s+is\b\s*:?", re.I)
_BOXED = "\\boxed{"


def _drop_continuation(completion: str) -> str:
    """Cut at the first "Question:" line that follows some text (a base model's next example)."""
    for match in _NEW_QUESTION.finditer(completion):
        if completion[: match.start()].strip():
            return completion[: match.start()]
    return completion


def _boxed_spans(text: str) -> list[tuple[int, str]]:
    """(start, content) of every balanced `\\boxed{...}` in `text`."""
    spans = []
    start = text.find(_BOXED)
    while start != -1:
        depth, i = 1, start + len(_BOXED)
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            spans.append((start, text[start + len(_BOXED): i - 1]))
        start = text.find(_BOXED, start + 1)
    return spans


def normalize_number(text: str) -> str:
    """"$1,000.00" -> "1000", "72." -> "72", "-3.50" -> "-3.5"; non-numbers are returned stripped."""
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".").lstrip("+")
    try:
        value = Decimal(s)
    except InvalidOperation:
        return s
    return "0" if value == 0 else format(value.normalize(), "f")


def extract_number(completion: str) -> str | None:
    """The final number of a math solution (rules in the module docstring), normalised."""
    text = _drop_continuation(completion)
    candidates: list[str | None] = []
    if "####" in text:
        candidates.append(_first(_NUMBER.findall(text.rsplit("####", 1)[1])))
    boxed = _boxed_spans(text)
    if boxed:
        candidates.append(_last(_NUMBER.findall(boxed[-1][1])))
    markers = list(_ANSWER_IS.finditer(text)) + list(_ANSWER_COLON.finditer(text))
    if markers:
        last = max(markers, key=lambda m: m.start())
        candidates.append(_first(_NUMBER.findall(text[last.end():])))
    candidates.append(_last(_NUMBER.findall(text)))
    found = next((c for c in candidates if c is not None), None)
    return None if found is None else normalize_number(found)


def _first(xs: list[str]) -> str | None:
    return xs[0] if xs else None


def _last(xs: list[str]) -> str | None:
    return xs[-1] if xs else None


def _clean_answer(text: str) -> str:
    text = text.strip()
    for _ in range(3):  # peel nested wrappers such as **$\boxed{5}$**
        before = text
        text = text.strip().strip("*`").strip()
        if len(text) >= 2 and text[0] == text[-1] == "$":
            text = text[1:-1].strip()
        for wrapper in ("\\boxed{", "\\text{"):
            if text.startswith(wrapper) and text.endswith("}"):
                text = text[len(wrapper): -1]
        if text == before:
            break
    return text.strip()


def extract_final_answer(completion: str) -> str | None:
    """The model's final answer as free text (rules in the module docstring), or None if empty."""
    text = _drop_continuation(completion)
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return _clean_answer(tags[-1]) or None
    # (position, answer text) for every marker; the last one in the text wins
    found: list[tuple[int, str]] = [(start, content) for start, content in _boxed_spans(text)]
    for match in _ANSWER_COLON.finditer(text):  # the block after it: multi-line answers are grids
        found.append((match.start(), text[match.end():].lstrip(" \t\n").split("\n\n", 1)[0]))
    for match in _ANSWER_IS.finditer(text):
        found.append((match.start(), text[match.end():].split("\n", 1)[0]))
    if found:
        answer = _clean_answer(max(found, key=lambda f: f[0])[1])
    else:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        answer = _clean_answer(lines[-1]) if lines else ""
    return answer or None


# ---------------------------------------------------------------- gsm8k


def read_gsm8k_jsonl(path: str | Path) -> list[dict]:
    """Rows `{"question", "answer", "solution"}` of an official GSM8K JSONL file.

    `answer` is the normalised number after "####"; `solution` the full reference text.
    Raises ValueError naming the file and 1-based line of a malformed line.
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
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
            rows.append({"question": record["question"], "answer": normalize_number(final),
                         "solution": record["answer"]})
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
    return [{"question": r["question"], "answer": normalize_number(r["answer"].rsplit("####", 1)[1]),
             "solution": r["answer"]} for r in rows]


class Gsm8kTask(Task):
    """GSM8K from a local JSONL file or directory, else $THINKALOUD_GSM8K, else the hub (if online)."""

    def __init__(self, path: str | Path | None = None, system_prompt: str | None = GSM8K_SYSTEM_PROMPT):
        self.name = "gsm8k"
        self.system_prompt = system_prompt
        self.path = Path(path) if path else None
        self._rows: dict[str, tuple[str, list[dict]]] = {}  # split -> (source, rows)

    def _file_for(self, path: Path, split: str) -> Path:
        if path.is_dir():
            file = path / f"{split}.jsonl"
            if not file.is_file():
                raise FileNotFoundError(f"GSM8K directory {path} has no {split}.jsonl")
            return file
        if not path.is_file():
            raise FileNotFoundError(f"GSM8K file {path} does not exist")
        if path.stem != split:
            warnings.warn(f"GSM8K split {split!r} is read from {path}, whose name is not {split}.jsonl", stacklevel=3)
        return path

    def _load(self, split: str) -> tuple[str, list[dict]]:
        if split not in self._rows:
            path = self.path or (Path(os.environ[GSM8K_ENV]) if os.environ.get(GSM8K_ENV) else None)
            if path is not None:
                file = self._file_for(path, split)
                self._rows[split] = (str(file), read_gsm8k_jsonl(file))
            elif (rows := _hub_gsm8k(split)) is not None:
                self._rows[split] = ("hf:openai/gsm8k", rows)
            else:
                raise FileNotFoundError(
                    "No GSM8K data: pass a JSONL file or a directory with <split>.jsonl, e.g. "
                    "`--task gsm8k:/path/to/train.jsonl` (get_task('gsm8k', path=...)), or set "
                    f"{GSM8K_ENV}=/path/to/train.jsonl. In this project's environment the file "
                    "../shared/data/gsm8k/train.jsonl (relative to the repository) exists. "
                    "Downloading needs the `datasets` package and network access.")
        return self._rows[split]

    def items(self, n: int, seed: int = 0, split: str = "train") -> list[Item]:
        _check_split(split)
        source, rows = self._load(split)
        if not 0 < n <= len(rows):
            raise ValueError(f"asked for {n} GSM8K items but {source} has {len(rows)}")
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        return [Item(id=f"gsm8k/{split}/{i}", question=rows[i]["question"], answer=rows[i]["answer"],
                     meta={"source": source, "index": i, "solution": rows[i]["solution"]})
                for i in order[:n]]

    def extract_answer(self, completion: str) -> str | None:
        return extract_number(completion)

    def score(self, item: Item, completion: str) -> float:
        return float(self.extract_answer(completion) == normalize_number(item.answer))


# ---------------------------------------------------------------- reasoning-gym

RG_SEED_STRIDE = 100_000  # items per (seed, split); seeds are spaced this far apart
RG_MAX_SEED = 10_000
RG_SPLIT_OFFSET = {"train": 0, "validation": 1_000_000_000, "test": 2_000_000_000}


def rg_seed(seed: int, split: str) -> int:
    """The reasoning-gym seed for our (seed, split).

    reasoning-gym draws item i of a dataset with seed s from `Random(s + i)`, so seeds s and s+1
    share all but one item. Spacing seeds by `RG_SEED_STRIDE` and splits by 1e9 keeps every
    (seed, split) disjoint for n <= RG_SEED_STRIDE, and stays below 2**32 for numpy seeding.
    """
    _check_split(split)
    if not 0 <= seed < RG_MAX_SEED:
        raise ValueError(f"reasoning-gym task seeds must be in [0, {RG_MAX_SEED}), got {seed}")
    return RG_SPLIT_OFFSET[split] + seed * RG_SEED_STRIDE


class ReasoningGymTask(Task):
    """One reasoning-gym dataset; `rg_kwargs` are fields of its config (e.g. ChainSumConfig)."""

    def __init__(self, dataset: str, rg_kwargs: Mapping[str, Any] | None = None,
                 system_prompt: str | None = RG_SYSTEM_PROMPT):
        from reasoning_gym.factory import DATASETS

        if dataset not in DATASETS:
            import difflib

            close = difflib.get_close_matches(dataset, DATASETS, n=5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown reasoning-gym dataset {dataset!r}.{hint} "
                             f"Available ({len(DATASETS)}): {', '.join(sorted(DATASETS))}")
        fields = {f.name for f in DATASETS[dataset][1].__dataclass_fields__.values()} - {"seed", "size"}
        kwargs = {**RG_DEFAULT_KWARGS.get(dataset, {}), **(rg_kwargs or {})}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise ValueError(f"unknown settings {unknown} for reasoning-gym dataset {dataset!r} "
                             f"(seed and size are set by items()); valid: {sorted(fields)}")
        self.name = f"rg:{dataset}"
        self.dataset = dataset
        self.rg_kwargs = kwargs
        self.system_prompt = system_prompt
        self._scorer = self._create(size=1, seed=0)  # validates the settings now

    def _create(self, size: int, seed: int):
        import reasoning_gym

        try:
            return reasoning_gym.create_dataset(self.dataset, size=size, seed=seed, **self.rg_kwargs)
        except (AssertionError, ValueError, TypeError) as e:
            raise ValueError(f"invalid settings {self.rg_kwargs} for reasoning-gym dataset "
                             f"{self.dataset!r}: {e}") from e

    def items(self, n: int, seed: int = 0, split: str = "train") -> list[Item]:
        if not 0 < n <= RG_SEED_STRIDE:
            raise ValueError(f"n must be in [1, {RG_SEED_STRIDE}] for reasoning-gym tasks, got {n}")
        base = rg_seed(seed, split)
        data = self._create(size=n, seed=base)
        items = []
        for i in range(n):
            entry = data[i]
            answer = entry.get("answer")
            items.append(Item(id=f"{self.name}/{split}/seed{seed}/{i}", question=entry["question"],
                              answer="" if answer is None else str(answer),
                              meta={"dataset": self.dataset, "entry": entry, "rg_seed": base,
                                    "rg_kwargs": dict(self.rg_kwargs)}))
        return items

    def extract_answer(self, completion: str) -> str | None:
        return extract_final_answer(completion)

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

    def __init__(self, config: tom.TomConfig | None = None, system_prompt: str | None = TOM_SYSTEM_PROMPT):
        self.name = "tom"
        self.config = config or tom.TomConfig()
        self.system_prompt = system_prompt

    def items(self, n: int, seed: int = 0, split: str = "train") -> list[Item]:
        _check_split(split)
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        items = []
        for i in range(n):
            # a string seed is hashed with sha512 by `random`: stable across runs and platforms
            story = tom.generate_story(self.config, random.Random(f"tom/{split}/{seed}/{i}"))
            items.append(Item(id=f"tom/{split}/seed{seed}/{i}", question=story.text(), answer=story.answer,
                              meta=story.to_meta()))
        return items

    def extract_answer(self, completion: str) -> str | None:
        answer = extract_final_answer(completion)
        return None if answer is None else tom.normalize_container(answer) or None

    def score(self, item: Item, completion: str) -> float:
        answer = self.extract_answer(completion)
        if answer is None:
            return 0.0
        return float(tom.container_matches(answer, item.answer, item.meta["containers"]))


# ---------------------------------------------------------------- factory


def get_task(spec: str, *, system_prompt: str | None = None, path: str | None = None,
             rg_kwargs: Mapping[str, Any] | None = None, tom_config: tom.TomConfig | None = None) -> Task:
    """Build a task from a spec in KNOWN_TASKS.

    system_prompt: None keeps the task's default; "" means no system prompt.
    path: GSM8K JSONL file or directory (same as `gsm8k:<path>`).
    rg_kwargs: reasoning-gym config fields for `rg:<name>`, on top of RG_DEFAULT_KWARGS.
    tom_config: generator settings for `tom`.
    """
    spec = spec.strip()
    kind, _, arg = spec.partition(":")
    extra = {"path": path, "rg_kwargs": rg_kwargs, "tom_config": tom_config}
    allowed = {"gsm8k": "path", "rg": "rg_kwargs", "tom": "tom_config"}.get(kind)
    misplaced = [k for k, v in extra.items() if v is not None and k != allowed]
    if allowed and misplaced:
        raise ValueError(f"{misplaced} do not apply to task {spec!r}")
    prompt_kw = {} if system_prompt is None else {"system_prompt": system_prompt}

    if kind == "gsm8k":
        if arg and path and Path(arg) != Path(path):
            raise ValueError(f"task {spec!r} names a file and path={path!r} another; give one")
        return Gsm8kTask(path=arg or path, **prompt_kw)
    if kind == "rg" and arg:
        return ReasoningGymTask(arg, rg_kwargs=rg_kwargs, **prompt_kw)
    if kind == "tom" and not arg:
        return TomTask(config=tom_config, **prompt_kw)
    raise ValueError(f"unknown task {spec!r}; expected one of {KNOWN_TASKS}")
